"""The engine cache: one engine per (ONNX content, TensorRT version, GPU, precision, shapes).

A TensorRT engine is only valid for the TensorRT version and GPU model it was built on,
so all of them go into the key. Engines live in ``<cache>/engines/`` as
``<model>-<precision>-<digest>.engine`` with two sidecars: ``.engine.json`` (the model's
segstream metadata, so the engine is a self-describing model file) and
``.engine.key.json`` (the key, for people and for checks). Builds on the same GPU and
TensorRT version share a timing cache, which makes later builds much faster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from segstream.assets import cache_dir
from segstream.engines.metadata import ModelMetadata, sidecar_path
from segstream.errors import ModelError

logger = logging.getLogger(__name__)

ENGINE_SUFFIX = ".engine"


@dataclass(frozen=True)
class ShapeProfile:
    """Input sizes an engine accepts: (height, width) at minimum, optimum and maximum, and
    the largest batch (frames of several sources in one call; 1 to ``batch``, tuned for
    ``batch``).

    Example:
        >>> ShapeProfile.parse("256x512:512x1024:1024x2048").opt
        (512, 1024)
        >>> ShapeProfile.parse("512x1024").is_static
        True
    """

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]
    batch: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or not 1 <= self.batch <= 64:
            raise ModelError(f"the largest batch must be 1-64 frames, found {self.batch!r}")
        for name in ("min", "opt", "max"):
            value = getattr(self, name)
            if len(value) != 2 or any(int(v) <= 0 for v in value):
                raise ModelError(f"shape {name} must be a positive HEIGHTxWIDTH, found {value}")
            object.__setattr__(self, name, (int(value[0]), int(value[1])))
        for axis in (0, 1):
            if not self.min[axis] <= self.opt[axis] <= self.max[axis]:
                raise ModelError(f"shapes must satisfy MIN <= OPT <= MAX on each side, found {self}")

    @classmethod
    def parse(cls, text: str) -> "ShapeProfile":
        """``MIN:OPT:MAX`` with each ``HEIGHTxWIDTH`` (one size alone means a static engine)."""
        parts = text.lower().replace(" ", "").split(":")
        try:
            sizes = [tuple(int(v) for v in p.split("x")) for p in parts]
        except ValueError:
            sizes = []
        if len(parts) not in (1, 3) or len(sizes) != len(parts) or any(len(s) != 2 for s in sizes):
            raise ModelError(f"--shapes takes MIN:OPT:MAX as HEIGHTxWIDTH each (e.g. 256x512:512x1024:1024x2048) "
                             f"or one HEIGHTxWIDTH, found {text!r}")
        if len(sizes) == 1:
            sizes = sizes * 3
        return cls(sizes[0], sizes[1], sizes[2])  # type: ignore[arg-type]

    @classmethod
    def static(cls, height: int, width: int) -> "ShapeProfile":
        """An engine for one input size."""
        return cls((height, width), (height, width), (height, width))

    @property
    def is_static(self) -> bool:
        return self.min == self.opt == self.max

    def dims(self, channels: int = 3) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """NCHW min/opt/max for ``IOptimizationProfile.set_shape`` (batch 1 to ``batch``)."""
        return ((1, channels, *self.min), (self.batch, channels, *self.opt), (self.batch, channels, *self.max))

    def __str__(self) -> str:
        sizes = ":".join(f"{h}x{w}" for h, w in (self.min, self.opt, self.max))
        return sizes if self.batch == 1 else f"{sizes}@b{self.batch}"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    shapes: str
    workspace_gb: float
    calibration: str = ""

    def digest(self) -> str:
        """A short stable hash of the key."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def engines_dir() -> Path:
    """Where cached engines live (``$SEGSTREAM_ENGINE_CACHE`` or ``<cache>/engines``)."""
    return Path(os.environ.get("SEGSTREAM_ENGINE_CACHE") or cache_dir() / "engines")


def engine_path(model_stem: str, key: EngineKey, root: Path | None = None) -> Path:
    """The cache file for an engine."""
    return (root or engines_dir()) / f"{model_stem}-{key.precision}-{key.digest()}{ENGINE_SUFFIX}"


def timing_cache_path(key: EngineKey, root: Path | None = None) -> Path:
    """The timing cache shared by builds with the same TensorRT version and GPU."""
    safe_gpu = "".join(c if c.isalnum() else "_" for c in key.gpu_name)
    return (root or engines_dir()) / f"timing-trt{key.tensorrt_version}-{safe_gpu}-{key.compute_capability}.cache"


def key_path(engine: Path) -> Path:
    """``model.engine`` -> ``model.engine.key.json``."""
    return engine.with_name(engine.name + ".key.json")


def write_sidecars(engine: Path, metadata: ModelMetadata, key: EngineKey) -> None:
    """Write the metadata and key sidecars of ``engine`` (atomically, each)."""
    for path, text in ((sidecar_path(engine), metadata.to_json()), (key_path(engine), json.dumps(asdict(key), indent=2))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def read_engine_key(engine: Path) -> EngineKey | None:
    """The key an engine was built with, or None when its key sidecar is missing or unreadable."""
    try:
        return EngineKey(**json.loads(key_path(engine).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def cached_engine(engine: Path, key: EngineKey) -> bool:
    """True when ``engine`` exists with metadata and was built with exactly ``key``."""
    return engine.is_file() and sidecar_path(engine).is_file() and read_engine_key(engine) == key

