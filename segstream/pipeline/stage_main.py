"""Entry point of a stage process: ``python -m segstream.pipeline.stage_main SPEC.json``.

The supervisor starts every stage this way, with a spec it wrote for this run; specs are
internal to a run, not a user interface (to spread work over hosts, see
``docs/deployment.md``).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

STAGE_MODULES: dict[str, str] = {
    "capture": "segstream.pipeline.stages.capture",
    "preprocess": "segstream.pipeline.stages.preprocess",
    "infer": "segstream.pipeline.stages.infer",
    "publish": "segstream.pipeline.stages.publish",
    "render": "segstream.pipeline.stages.render",
}


def main(argv: list[str] | None = None) -> int:
    """Run the stage described by the spec file named in ``argv[0]``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m segstream.pipeline.stage_main SPEC.json\n")
        return 2
    from segstream.pipeline.control import EventKind
    from segstream.pipeline.runtime import StageRuntime
    from segstream.pipeline.spec import StageSpec

    spec_path = Path(argv[0])
    spec = StageSpec.from_json(spec_path.read_text())
    logging.basicConfig(
        level=os.environ.get("SEGSTREAM_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s {spec.name} %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if spec.nice:
        os.nice(spec.nice)
    if spec.kind.value != "infer":
        import cv2

        cv2.setNumThreads(1)  # light stages stay single-threaded; the cores go to inference
    runtime = StageRuntime(spec, spec_path.with_suffix(".ledger") if spec.control else None)
    try:
        module = importlib.import_module(STAGE_MODULES[spec.kind.value])
        code = _profiled(spec.name, lambda: module.run(spec, runtime))
    except KeyboardInterrupt:
        code = 0
    except Exception as exc:  # noqa: BLE001 - report any failure to the supervisor, then exit non-zero
        logger.error("stage failed: %s", exc)
        logger.debug("%s", traceback.format_exc())
        runtime.emit(EventKind.ERROR, message=f"{type(exc).__name__}: {exc}")
        code = 1
    code = runtime.finish(code)
    if runtime.orphaned:
        from segstream.pipeline.run_folder import sweep_after_supervisor

        sweep_after_supervisor(spec_path, spec.run_id)
    return code


def _profiled(name: str, work: Callable[[], int]) -> int:
    """Run ``work``; under ``SEGSTREAM_PROFILE_DIR`` with cProfile, its statistics written
    to ``<dir>/<stage>.prof`` (for ``python -m pstats``): where a stage's time goes."""
    folder = os.environ.get("SEGSTREAM_PROFILE_DIR")
    if not folder:
        return work()
    import cProfile

    profile = cProfile.Profile()
    try:
        return profile.runcall(work)
    finally:
        Path(folder).mkdir(parents=True, exist_ok=True)
        profile.dump_stats(str(Path(folder) / f"{name}.prof"))


def _exit(code: int) -> None:
    """Leave at once: the stage closed what it owns, and tearing down the interpreter's
    modules only costs time a stop under load does not have (a niced process gets little
    CPU)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    try:
        _exit(main())
    except KeyboardInterrupt:  # Ctrl-C before the stage installed its handlers: nothing to clean
        _exit(130)
