"""A run's folder, and what a run leaves when its supervisor is killed (SIGKILL, OOM killer).

A run's folder (``segstream-*`` in the temp folder: spec files, ledgers, ipc sockets)
holds an ``owner`` file with the supervisor's pid, the run id and the process's start
time (so a supervisor inside any program counts as alive, and a reused pid does not).
Normally the supervisor removes the folder and the run's shared memory itself. When it
was killed:

- its stages notice (their parent is gone), stop, and on their way out remove the folder
  and sweep the run's shared memory (``sweep_run``);
- the next ``segstream run`` removes the folders, and the shared memory, of every run
  whose supervisor is gone (``sweep_orphans``), never those of a live run.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from segstream.pipeline.wire.shm_segments import SHM_PREFIX, sweep

logger = logging.getLogger(__name__)

OWNER = "owner"
RUN_DIR_PREFIX = "segstream-"
MAX_IPC_DIR = 80  # ipc:// paths must fit in sun_path (108 bytes) with the socket name


def make_run_dir(run_id: str) -> Path:
    """A new private (0700) run folder in the temp folder, owned by this process; first
    removes what runs whose supervisor is gone left there (``sweep_orphans``)."""
    base = tempfile.gettempdir()
    if len(base) > MAX_IPC_DIR - 30:
        base = "/tmp"
    sweep_orphans(Path(base))
    run_dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=base))
    claim(run_dir, run_id)
    return run_dir


def claim(run_dir: Path, run_id: str) -> None:
    """Mark ``run_dir`` as the folder of run ``run_id``, owned by this process (its pid and
    start time: a pid the system gives to a newer process later does not keep it)."""
    started = _start_time(os.getpid())
    (run_dir / OWNER).write_text(f"{os.getpid()} {run_id}" + (f" {started}" if started is not None else "") + "\n")


def _owner(run_dir: Path) -> tuple[int, str, int | None] | None:
    """(pid, run id, start time if recorded) from a run folder's owner file."""
    try:
        fields = (run_dir / OWNER).read_text().split()
        if len(fields) not in (2, 3):
            return None
        return int(fields[0]), fields[1], int(fields[2]) if len(fields) == 3 else None
    except (OSError, ValueError):
        return None


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, /proc/PID/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])  # field 22; the name may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, started: int | None = None) -> bool:
    """Whether the owner of a run folder still runs: process ``pid``, started at ``started``
    where the owner file says (any program: a supervisor run through the Python API is
    not ``segstream`` on its command line); for an owner file without it, a live process
    with ``segstream`` on its command line (a reused pid is not)."""
    if started is not None:
        now = _start_time(pid)
        if now is not None or Path("/proc/self/stat").exists():
            return now == started
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True  # no /proc: assume alive
    return b"segstream" in cmdline


def sweep_run(run_dir: Path, run_id: str) -> list[str]:
    """Remove a run's folder and shared memory; returns what was removed."""
    removed = sweep(f"{SHM_PREFIX}{run_id}-")
    if run_dir.is_dir():
        shutil.rmtree(run_dir, ignore_errors=True)
        removed.append(str(run_dir))
    return removed


def sweep_orphans(base: Path) -> list[str]:
    """Remove what runs whose supervisor is gone left in ``base`` and in shared memory."""
    removed: list[str] = []
    try:
        folders = [p for p in base.iterdir() if p.name.startswith(RUN_DIR_PREFIX) and p.is_dir()]
    except OSError:
        return removed
    runs = 0
    for folder in folders:
        owner = _owner(folder)
        if owner is None or _alive(owner[0], owner[2]):
            continue  # not ours to judge, or still running
        removed += sweep_run(folder, owner[1])
        runs += 1
    if removed:
        logger.info("removed what %d killed run(s) left: %s", runs, ", ".join(removed[:5]))
    return removed


def sweep_after_supervisor(spec_path: Path, run_id: str) -> None:
    """Called by a stage whose supervisor is gone, as it exits: remove the run's folder
    (the one holding its spec, if it belongs to ``run_id``) and shared memory."""
    run_dir = spec_path.parent
    owner = _owner(run_dir)
    if owner is None or owner[1] != run_id or _alive(owner[0], owner[2]):
        return
    removed = sweep_run(run_dir, run_id)
    if removed:
        logger.info("the supervisor is gone; removed %s", ", ".join(removed[:5]))
