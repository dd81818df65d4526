"""The runtime of one stage process: signals, the control channel and its stats.

SIGINT and SIGTERM set the stop flag; every blocking wait in a stage lasts at most
``POLL_MS`` before it looks at the flag again, so a stage stops within a fraction of a
second from any state. Commands arrive typed (``control.py``); a malformed one is counted
and skipped.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import time
from pathlib import Path
from typing import Callable

import zmq

from segstream.errors import MessageError
from segstream.log_throttle import LogThrottle
from segstream.pipeline.control import (
    Command,
    CommandMessage,
    EventKind,
    PipelineFigures,
    StageEvent,
    decode_command,
    encode,
)
from segstream.pipeline.spec import StageSpec
from segstream.pipeline.telemetry.ledger import Ledger
from segstream.pipeline.telemetry.stats import StageReport, StageStats
from segstream.pipeline.wire.names import is_safe_name
from segstream.pipeline.wire.policies import POLL_MS
from segstream.pipeline.wire.security import PeerGuard
from segstream.pipeline.wire.transport import Role, make_socket

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 1.0
PARENT_CHECK_S = 0.5
STANDALONE_DRAIN_S = 5.0  # after end of stream, a stage running alone waits this long for its readers


def cpu_seconds() -> float:
    """CPU time this process used so far (user and system, every thread), seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round(usage.ru_utime + usage.ru_stime, 3)


class StageRuntime:
    """Signals, control channel and stats of one stage process.

    Args:
        spec: the stage's spec.
        ledger: where the stage keeps its counters for the supervisor (next to its spec
            file); None when it runs alone.
    """

    def __init__(self, spec: StageSpec, ledger: Path | None = None) -> None:
        self.spec = spec
        self.context = zmq.Context()
        self.stats = StageStats(spec.name)
        self.ledger = Ledger(ledger) if ledger is not None else None
        if self.ledger is not None:
            self.stats.keep_ledger(self.ledger)
        self.figures = PipelineFigures()  # the latest pipeline-wide figures from the supervisor
        self._stop = False
        self._start = False
        self._finish = False
        self._resync = False
        self._end_source = False  # this capture's source is to end (removed from the run)
        self._added: list[tuple[str, tuple[str, ...]]] = []  # sources that joined, and where to read them
        self.orphaned = False  # the supervisor died: clean up after it on the way out
        self._last_report = time.monotonic()
        self._before_report: list[Callable[[], None]] = []
        self._refusals = LogThrottle()
        self._parent = os.getppid()
        self._last_parent_check = time.monotonic()
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self.guard = PeerGuard(self.context)  # refuses tcp peers without the run's key, and counts them
        client = spec.keys.client if spec.keys else None
        self.control = make_socket(self.context, Role.CONTROL_OUT, connect=spec.control,
                                   client=client) if spec.control else None
        self.commands = make_socket(self.context, Role.COMMANDS_SUB, connect=spec.commands,
                                    client=client) if spec.commands else None

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self._stop:
            logger.info("%s: %s received, stopping", self.spec.name, signal.Signals(signum).name)
        self._stop = True

    def _mine(self, source: str) -> bool:
        """True for a command about every stage (no source), or about this capture's source."""
        return not source or source == getattr(self.spec.settings, "source_id", None)

    def _apply(self, message: CommandMessage) -> None:
        command = message.command
        if command is Command.START:
            self._start = True
        elif command is Command.STOP:
            self._stop = True
        elif command is Command.FINISH and self._mine(message.source):
            self._finish = True
        elif command is Command.FIGURES and message.figures is not None:
            self.figures = message.figures
        elif command is Command.RESYNC:
            self._resync = True
        elif command is Command.END_SOURCE and message.source and self._mine(message.source):
            self._end_source = True
        elif command is Command.ADD_SOURCE:
            if not is_safe_name(message.source):
                self.refuse(None, "control_bad_source", f"add_source names an unsafe source id {message.source!r:.80}")
                return
            self._added.append((message.source, tuple(message.connect.get(self.spec.name, ()))))

    def take_added(self) -> list[tuple[str, tuple[str, ...]]]:
        """Sources that joined the running pipeline since the commands were last read
        (``stopping`` reads them), each with the endpoints this stage's input connects to
        for it (none for a stage that reads another stage's output)."""
        added, self._added = self._added, []
        return added

    @property
    def ending(self) -> bool:
        """True once this capture's source is to end (``end_source``) or a stop came: its
        stream ends with an end-of-stream message like a source that ended by itself."""
        return self._end_source or self.stopping

    def take_resync(self) -> bool:
        """True once after the supervisor restarted a stage (frames it held are lost)."""
        resync, self._resync = self._resync, False
        return resync

    def _read_commands(self) -> None:
        while self.commands is not None:
            try:
                raw = self.commands.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._apply(decode_command(raw))
            except MessageError as exc:
                self.refuse(None, f"control_{exc.reason}", f"malformed command: {exc}")

    @property
    def stopping(self) -> bool:
        """True once a stop was requested (signal, supervisor command, or the supervisor
        died: a stage never outlives the process that started it)."""
        if not self._stop and self.commands is not None:
            self._read_commands()
            now = time.monotonic()
            if now - self._last_parent_check > PARENT_CHECK_S:
                self._last_parent_check = now
                if os.getppid() != self._parent:
                    logger.error("%s: the supervisor is gone; stopping", self.spec.name)
                    self._stop = True
                    self.orphaned = True
        return self._stop

    def emit(self, kind: EventKind, **fields: object) -> None:
        """Send an event to the supervisor (no-op when running alone)."""
        if self.control is None:
            return
        try:
            event = StageEvent(self.spec.name, kind, token=self.spec.control_token, **fields)  # type: ignore[arg-type]
            self.control.send(encode(event), zmq.NOBLOCK)
        except zmq.Again:
            logger.debug("control channel full; event %s dropped", kind.value)

    def ready_and_wait_for_start(self) -> bool:
        """Report ready, then wait for the supervisor's start (at once when alone).

        Returns False if a stop came first.
        """
        self.stats.cpu_setup_s = cpu_seconds()
        self.emit(EventKind.READY)
        if self.commands is None:
            return not self.stopping
        while not self.stopping:
            if self.commands.poll(POLL_MS):
                self._read_commands()
                if self._start:
                    self.emit(EventKind.STARTED)
                    return True
        return False

    def wait_until_downstream_done(self) -> None:
        """After this stage sent its end of stream: keep its sockets open until the
        supervisor says every stage behind it is done (``finish``), or a stop.

        Closing earlier can lose the last messages: ZeroMQ's linger only covers what is
        still in the sender's queue, not what sits in a socket buffer the receiver has not
        read yet. Running alone, the stage waits ``STANDALONE_DRAIN_S``.
        """
        if self.commands is None:
            deadline = time.monotonic() + STANDALONE_DRAIN_S
            while not self._stop and time.monotonic() < deadline:
                time.sleep(POLL_MS / 1000)
            return
        self.emit(EventKind.ENDED)
        while not self._stop and not self._finish:
            if self.commands.poll(POLL_MS):
                self._read_commands()
            elif self.stopping:  # also notices a supervisor that is gone
                break

    def refuse(self, source: str | None, reason: str, detail: str) -> None:
        """Skip a message this stage cannot use: counted by reason, logged at most once per
        ``LogThrottle.every_s`` per reason (a flood of bad input cannot flood the log)."""
        self.stats.skipped.add(reason, source)
        if self._refusals.allow(reason):
            logger.warning("%s: skipped a message (%s): %s", self.spec.name, reason, detail)

    def before_report(self, refresh: Callable[[], None]) -> None:
        """Call ``refresh`` before each report (to copy figures kept elsewhere into the stats)."""
        self._before_report.append(refresh)

    def _report(self) -> StageReport:
        refused = self.guard.refused()
        if refused:
            self.stats.extra["peers_refused"] = refused
        for refresh in self._before_report:
            refresh()
        return self.stats.report()

    def tick(self, now_too: bool = False) -> None:
        """Send periodic stats to the supervisor (``now_too``: now, whenever the last were:
        figures that must be current with the next event, such as a source's end)."""
        now = time.monotonic()
        if now_too or now - self._last_report >= STATS_INTERVAL_S:
            self._last_report = now
            self.emit(EventKind.STATS, report=self._report())

    def finish(self, exit_code: int) -> int:
        """Send final stats, close sockets; returns ``exit_code``."""
        self.stats.cpu_s = cpu_seconds()
        self.emit(EventKind.DONE, report=self._report(), exit_code=exit_code, stopped=self._stop)
        if self.control is not None:
            self.control.close(linger=1000)
        if self.commands is not None:
            self.commands.close(linger=0)
        self.guard.close()
        # Closes whatever a failed stage left open (term() alone would wait for it forever).
        self.context.destroy(linger=0)
        return exit_code
