"""The data plane's closed choices, and endpoint naming: what planning needs from the data
plane without importing its runtime (ZeroMQ, shared memory)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path


class FlowPolicy(str, Enum):
    """How a pipeline trades completeness against latency (``policies.py``)."""

    LIVE = "live"
    LOSSLESS = "lossless"


class Transport(str, Enum):
    """How the stages of one run talk: ``ipc`` (one host, shared memory) or ``tcp`` (inline payloads)."""

    IPC = "ipc"
    TCP = "tcp"


class RestartPolicy(str, Enum):
    """What the supervisor does when a stage process dies: restart it, or end the run."""

    NEVER = "never"
    ON_FAILURE = "on-failure"


def ipc_endpoint(folder: Path, name: str) -> str:
    """An ipc:// endpoint for ``name`` inside ``folder``."""
    return f"ipc://{folder / name}"
