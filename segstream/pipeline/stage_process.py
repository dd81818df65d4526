"""One stage process as the supervisor sees it: how it is started and what it reported."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from segstream.pipeline.spec import StageKind, StageSpec
from segstream.pipeline.telemetry.stats import StageReport

logger = logging.getLogger(__name__)


@dataclass
class StageProcess:
    """A started stage: its spec, process, and what it reported.

    Attributes:
        spec: what it runs.
        process: the process.
        path: its spec file; its ledger lies beside it (``.ledger``).
        ready: it reported ready.
        started: it reported started.
        ended: it sent its end of stream and waits for the stages behind it.
        done: it sent its final report.
        report: its latest report.
        error: the error it reported.
        restart_at: it died and is restarted at this time (monotonic), or None.
        give_up: a capture given up on: why (its next process only ends the stream).
    """

    spec: StageSpec
    process: subprocess.Popen[bytes]
    path: Path
    ready: bool = False
    started: bool = False
    ended: bool = False
    done: bool = False
    report: StageReport | None = None
    error: str = ""
    restart_at: float | None = None
    give_up: str = ""

    @property
    def ledger_path(self) -> Path:
        """Where the process keeps its counters (``telemetry.ledger``)."""
        return self.path.with_suffix(".ledger")

    def remove_files(self) -> None:
        """Remove its spec file and ledger (a dead process whose figures were read)."""
        for path in (self.path, self.ledger_path):
            path.unlink(missing_ok=True)


def spawn(spec: StageSpec, run_dir: Path, env: dict[str, str]) -> StageProcess:
    """Write ``spec`` into ``run_dir`` and start its process.

    One inference process gets the cores; the light stages stay single-threaded.
    """
    suffix = f".r{spec.incarnation}" if spec.incarnation else ""
    path = run_dir / f"{spec.name}{suffix}.json"
    path.write_text(spec.to_json())
    if spec.kind is not StageKind.INFER:
        env = {**env, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "segstream.pipeline.stage_main", str(path)],
                               env=env, stdin=subprocess.DEVNULL)
    return StageProcess(spec, process, path)


def exit_reason(code: int) -> str:
    """How a process ended, in words."""
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def stop_processes(alive: list[StageProcess], grace_s: float) -> None:
    """SIGTERM to each of ``alive``; whichever has not exited after ``grace_s`` is killed."""
    for stage in alive:
        try:
            stage.process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    for stage in alive:
        try:
            stage.process.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            logger.warning("stage %s did not stop in time; killing it", stage.spec.name)
            stage.process.kill()
            stage.process.wait()
