"""The stage programs. Each module exposes ``run(spec, runtime) -> int``."""
