"""The control plane: commands from the supervisor to the stages, events back.

Both directions are versioned JSON of frozen dataclasses, checked on receipt like
data-plane messages (``typed_json``): a malformed or forged message raises
``MessageError`` with a short reason, which the receiver counts and skips.

- Commands (supervisor PUB -> every stage SUB): ``start``, ``stop``, ``finish`` (every
  stage behind you is done: close your sockets; with a ``source``, only that source's
  capture), ``figures`` (pipeline-wide numbers for stages that show them, such as the
  live view), ``resync`` (a stage was restarted: frames it held are gone, stop waiting
  for them), ``add_source`` (a source joined the running pipeline: take its frames, from
  the endpoints ``connect`` names for you) and ``end_source`` (its capture ends the
  stream now, as if the source had ended).
- Events (stage PUSH -> supervisor PULL): ``ready``, ``started``, ``ended`` (sent its end
  of stream), ``stats`` (periodic report), ``done`` (final report and exit code),
  ``error``, ``source_failed``, ``source_ended`` (a source's end of stream went
  through this stage) and ``source_joined`` (this stage takes a source that joined: the
  supervisor repeats ``add_source`` until every stage said so, since a stage still
  starting may not have heard it).

    >>> raw = encode(CommandMessage(Command.STOP))
    >>> decode_command(raw).command is Command.STOP
    True
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from segstream.errors import MessageError
from segstream.pipeline.telemetry.stats import StageReport
from segstream.pipeline.typed_json import dump, load_dataclass
from segstream.pipeline.wire.checks import parse_json

CONTROL_VERSION = 1
MAX_CONTROL_BYTES = 4 << 20  # a stage report with its histograms is ~100 KB


class Command(str, Enum):
    """What the supervisor tells the stages."""

    START = "start"
    STOP = "stop"
    FINISH = "finish"
    FIGURES = "figures"
    RESYNC = "resync"
    ADD_SOURCE = "add_source"
    END_SOURCE = "end_source"


class EventKind(str, Enum):
    """What a stage tells the supervisor."""

    READY = "ready"
    STARTED = "started"
    ENDED = "ended"
    STATS = "stats"
    DONE = "done"
    ERROR = "error"
    SOURCE_FAILED = "source_failed"
    SOURCE_ENDED = "source_ended"
    SOURCE_JOINED = "source_joined"


@dataclass(frozen=True)
class PipelineFigures:
    """Pipeline-wide numbers the supervisor sends to the stages (the live view shows them).

    Attributes:
        frames_in: frames read by every capture so far.
        skipped: frames skipped anywhere so far.
        stages: per stage, the median processing time (ms).
        miou: mean IoU so far under ``--eval``, else None.
    """

    frames_in: int = 0
    skipped: int = 0
    stages: dict[str, float] = field(default_factory=dict)
    miou: float | None = None


@dataclass(frozen=True)
class CommandMessage:
    """One command.

    Attributes:
        command: what to do.
        figures: the numbers of ``figures``.
        source: the source a command is about (``add_source``, ``end_source``, and a
            ``finish`` meant for one capture only).
        connect: ``add_source``: per stage name, the endpoints its input connects to.
    """

    command: Command
    figures: PipelineFigures | None = None
    source: str = ""
    connect: dict[str, tuple[str, ...]] = field(default_factory=dict)
    version: int = CONTROL_VERSION


@dataclass(frozen=True)
class StageEvent:
    """One event from a stage.

    Attributes:
        stage: the stage's name.
        kind: what happened.
        report: the stage's figures (``stats`` and ``done``).
        exit_code: the stage's exit code (``done``).
        stopped: the stage ended on a stop request (``done``).
        message: what went wrong (``error``, ``source_failed``).
        source: the source that failed, ended or joined (``source_failed``,
            ``source_ended``, ``source_joined``).
        token: the run's control token (from the stage's spec): the supervisor takes an
            event only with it.
    """

    stage: str
    kind: EventKind
    report: StageReport | None = None
    exit_code: int = 0
    stopped: bool = False
    message: str = ""
    source: str = ""
    token: str = ""
    version: int = CONTROL_VERSION

    def carries(self, token: str) -> bool:
        """Whether the event has the run's ``token`` (compared in constant time, as bytes:
        a forged token may be any text)."""
        return hmac.compare_digest(self.token.encode("utf-8", "surrogatepass"), token.encode())


def encode(message: CommandMessage | StageEvent) -> bytes:
    """A command or event as versioned JSON bytes."""
    return json.dumps(dump(message), separators=(",", ":")).encode()


def _parse(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) > MAX_CONTROL_BYTES:
        raise MessageError("too_large", f"{what} is {len(raw)} bytes, limit {MAX_CONTROL_BYTES}")
    data = parse_json(raw, what)  # strict: no NaN or Infinity, no nesting that exhausts the stack
    if not isinstance(data, dict):
        raise MessageError("bad_json", f"{what} is a JSON {type(data).__name__}, expected an object")
    if data.get("version") != CONTROL_VERSION or isinstance(data.get("version"), bool):
        raise MessageError("bad_version", f"{what} version {data.get('version')!r}, this reader understands "
                                          f"{CONTROL_VERSION}")
    return data


class _FieldError(MessageError):
    def __init__(self, detail: str) -> None:
        super().__init__("bad_field", detail)


def decode_command(raw: bytes) -> CommandMessage:
    """A command from the supervisor, checked.

    Raises:
        MessageError: not a well-formed command of this version.
    """
    return load_dataclass(CommandMessage, _parse(raw, "command"), "command", _FieldError)


def decode_event(raw: bytes) -> StageEvent:
    """An event from a stage, checked field by field (a forged report is refused whole).

    Raises:
        MessageError: not a well-formed event of this version.
    """
    return load_dataclass(StageEvent, _parse(raw, "event"), "event", _FieldError)
