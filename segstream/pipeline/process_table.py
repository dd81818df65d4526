"""The processes of a run as Linux's /proc lists them: children of a pid, members of a
session, with their command lines (for tests and tools that watch or kill stages)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# A stage process runs ``python -m segstream.pipeline.stage_main RUN_DIR/<stage>[.r<k>].json``.
_STAGE_SPEC = re.compile(r"/([\w-]+)(?:\.r\d+)?\.json\s*$")


@dataclass(frozen=True)
class ProcessInfo:
    """One live (not zombie) process.

    Attributes:
        pid: its pid.
        parent: its parent's pid.
        session: its session id.
        cmdline: its command line, arguments joined by spaces.
    """

    pid: int
    parent: int
    session: int
    cmdline: str


def processes() -> list[ProcessInfo]:
    """Every live process this user can see (zombies left out)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            out.append(ProcessInfo(int(entry.name), int(fields[1]), int(fields[3]), cmdline))
    return out


def stage_name(cmdline: str) -> str | None:
    """The stage a process runs (``capture-0``, ``infer``...), from its command line;
    None for a process that is not a stage."""
    match = _STAGE_SPEC.search(cmdline) if "segstream.pipeline.stage_main" in cmdline else None
    return match.group(1) if match else None


def children_of(pid: int) -> dict[int, str]:
    """Live children of ``pid``: pid -> command line."""
    return {p.pid: p.cmdline for p in processes() if p.parent == pid}


def session_processes(sid: int) -> list[int]:
    """Pids of the live processes of session ``sid``."""
    return [p.pid for p in processes() if p.session == sid]
