"""What every stage process shares: its spec, its runtime (signals, control channel,
stats) and the receive-process-send loop of the middle stages.

A stage module exposes ``run(spec, runtime) -> int``. ``python -m segstream.pipeline.stage_main
SPEC.json`` starts one, so a stage can also run alone, on another host.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Protocol

import zmq

from segstream.pipeline.messages import Kind, Message, Stamp
from segstream.pipeline.payloads import PayloadWriter, mode_for_endpoint
from segstream.pipeline.policies import POLL_MS, FlowPolicy, Inbox, Outbox, Reorderer
from segstream.pipeline.stats import StageStats
from segstream.pipeline.transport import Role, make_socket

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 1.0
CARRIED = ("frame", "gt")  # parts every stage passes on for the ones behind it
PARENT_CHECK_S = 0.5
EOS_LINGER_MS = 2000  # what is still queued at a normal close (after wait_until_downstream_done)
STANDALONE_DRAIN_S = 5.0  # after end of stream, a stage running alone waits this long for its readers


class StageKind(str, Enum):
    """The stage processes of a pipeline."""

    CAPTURE = "capture"
    PREPROCESS = "preprocess"
    INFER = "infer"
    PUBLISH = "publish"
    RENDER = "render"


@dataclass(frozen=True)
class StageSpec:
    """Everything a stage process needs to run, JSON-serialisable.

    Attributes:
        name: unique stage name in the run (``capture-0``, ``infer``...).
        kind: which stage program runs.
        run_id: the run's id (names shared memory ``segstream-<run_id>-...``).
        policy: ``live`` or ``lossless``.
        inputs: endpoints to connect the input PULL socket to.
        outputs: endpoints to bind output PUSH sockets on, one per parallel worker
            downstream (empty for sinks).
        control: supervisor endpoint for events (None when started alone).
        commands: supervisor endpoint for start/stop commands (None: start at once).
        payloads: ``auto`` (shared memory on ipc://, inline on tcp://), ``shm`` or ``inline``.
        ring_readers: lossless readers of this stage's shared-memory ring.
        ring_slots: slots of that ring.
        reader_ids: this stage's reader index on upstream rings, per part name.
        reader_in_order: this stage sees every frame of its upstream rings in order
            (False for one of several parallel workers).
        sources: number of sources.
        eos_per_source: end-of-stream messages that end one source here (one per
            parallel worker upstream).
        reorder: put frames back in capture order (after parallel workers).
        delay_ms: artificial extra processing time per frame (tests of slow stages).
        nice: scheduling niceness added to the process (light stages yield the cores to
            inference, whose parallel sections stall when one of their threads is
            preempted).
        settings: stage-specific settings.
    """

    name: str
    kind: StageKind
    run_id: str
    policy: FlowPolicy
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    control: str | None = None
    commands: str | None = None
    payloads: str = "auto"
    ring_readers: int = 0
    ring_slots: int = 8
    reader_ids: dict[str, int] = field(default_factory=dict)
    reader_in_order: bool = True
    sources: int = 1
    eos_per_source: int = 1
    reorder: bool = False
    delay_ms: float = 0.0
    nice: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", StageKind(self.kind))
        object.__setattr__(self, "policy", FlowPolicy(self.policy))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if self.payloads not in ("auto", "shm", "inline"):
            raise ValueError(f"payloads must be auto, shm or inline, found {self.payloads!r}")

    @property
    def ring_name(self) -> str:
        """Shared-memory name prefix of this stage's ring."""
        return f"segstream-{self.run_id}-{self.name}"

    def to_json(self) -> str:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["policy"] = self.policy.value
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "StageSpec":
        return cls(**json.loads(text))


class StageRuntime:
    """Signals, control channel and stats of one stage process.

    SIGINT and SIGTERM set the stop flag; every blocking wait in a stage lasts at most
    ``POLL_MS`` before it looks at the flag again, so a stage stops within a fraction of
    a second from any state.
    """

    def __init__(self, spec: StageSpec) -> None:
        self.spec = spec
        self.context = zmq.Context()
        self.stats = StageStats(spec.name)
        self._stop = False
        self._finish = False
        self.pipeline_stats: dict[str, Any] = {}  # latest figures the supervisor sent
        self._last_report = time.monotonic()
        self._parent = os.getppid()
        self._last_parent_check = time.monotonic()
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self.control = make_socket(self.context, Role.CONTROL_OUT, connect=spec.control) if spec.control else None
        self.commands = make_socket(self.context, Role.COMMANDS_SUB, connect=spec.commands) if spec.commands else None

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self._stop:
            logger.info("%s: %s received, stopping", self.spec.name, signal.Signals(signum).name)
        self._stop = True

    def _read_commands(self) -> list[bytes]:
        out = []
        while self.commands is not None:
            try:
                out.append(self.commands.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
        for command in out:
            if command.startswith(b"stats "):  # the supervisor's pipeline-wide figures
                try:
                    self.pipeline_stats = json.loads(command[6:])
                except ValueError:
                    logger.debug("ignored malformed stats command")
        if b"stop" in out:
            self._stop = True
        if b"finish" in out:
            self._finish = True
        return out

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
        return self._stop

    def emit(self, event: str, **data: Any) -> None:
        """Send an event to the supervisor (no-op when running alone)."""
        if self.control is None:
            return
        payload = json.dumps({"stage": self.spec.name, "event": event, **data}).encode()
        try:
            self.control.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            logger.debug("control channel full; event %s dropped", event)

    def ready_and_wait_for_start(self) -> bool:
        """Report ready, then wait for the supervisor's start (at once when alone).

        Returns False if a stop came first.
        """
        self.emit("ready")
        if self.commands is None:
            return not self.stopping
        while not self.stopping:
            if self.commands.poll(POLL_MS) and b"start" in self._read_commands():
                self.emit("started")
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
        self.emit("ended")
        while not self._stop and not self._finish:
            if self.commands.poll(POLL_MS):
                self._read_commands()
            elif self.stopping:  # also notices a supervisor that is gone
                break

    def tick(self) -> None:
        """Send periodic stats to the supervisor."""
        now = time.monotonic()
        if now - self._last_report >= STATS_INTERVAL_S:
            self._last_report = now
            self.emit("stats", stats=self.stats.to_json())

    def finish(self, exit_code: int) -> int:
        """Send final stats, close sockets; returns ``exit_code``."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.stats.extra["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 3)
        self.emit("done", stats=self.stats.to_json(), exit_code=exit_code, stopped=self._stop)
        if self.control is not None:
            self.control.close(linger=1000)
        if self.commands is not None:
            self.commands.close(linger=0)
        # Closes whatever a failed stage left open (term() alone would wait for it forever).
        self.context.destroy(linger=0)
        return exit_code


class Processor(Protocol):
    """The per-frame work of a middle stage."""

    def process(self, message: Message) -> Message | None:
        """Handle one frame message; returns what to send on, or None if skipped
        (the processor counts the reason in the stage stats)."""
        ...

    def blocked_ns(self) -> int:
        """Total time spent waiting for downstream so far (0 if never)."""
        ...

    def discard(self, message: Message) -> None:
        """A frame superseded in live flow: release what it holds upstream."""
        ...

    def end_of_stream(self, message: Message) -> None:
        """The source of ``message`` ended (flush per-source outputs)."""
        ...

    def close(self) -> None:
        """Release everything (files, rings)."""
        ...


def open_writer(spec: StageSpec) -> PayloadWriter:
    """The payload writer of a stage's output (shared memory on ipc://, inline on tcp://)."""
    if not spec.outputs:
        raise ValueError(f"stage {spec.name} has no output endpoint to write payloads for")
    return PayloadWriter(mode_for_endpoint(spec.outputs[0], spec.payloads), spec.ring_name, spec.ring_readers,
                         spec.ring_slots, lossless=spec.policy is FlowPolicy.LOSSLESS)


def open_outbox(spec: StageSpec, runtime: StageRuntime) -> Outbox | None:
    """Bind the stage's output sockets; None for a sink."""
    if not spec.outputs:
        return None
    role = Role.STAGE_OUT_LIVE if spec.policy is FlowPolicy.LIVE else Role.STAGE_OUT_LOSSLESS
    sockets = []
    try:
        for endpoint in spec.outputs:
            sockets.append(make_socket(runtime.context, role, bind=endpoint))
    except Exception:
        for sock in sockets:
            sock.close(linger=0)
        raise
    return Outbox(sockets, spec.policy, runtime.stats.skipped, lambda: runtime.stopping)


def close_writer(writer: PayloadWriter, runtime: StageRuntime) -> None:
    """Close and unlink a stage's ring when the stage ends: by then every reader is done
    (``wait_until_downstream_done``) or the run is stopping. The supervisor sweeps what a
    killed stage leaves."""
    writer.close(unlink=True)


def stamp(message: Message, stage: str, in_ns: int) -> None:
    """Append this stage's timing stamp to ``message``."""
    message.header.stamps.append(Stamp(stage, in_ns, time.monotonic_ns()))


def run_middle_stage(spec: StageSpec, runtime: StageRuntime, processor: Processor) -> int:
    """Receive, process and send until every source ended or a stop is requested.

    Returns the process exit code (0 on end of stream and on a requested stop).
    """
    in_role = Role.STAGE_IN_LIVE if spec.policy is FlowPolicy.LIVE else Role.STAGE_IN_LOSSLESS
    pull = make_socket(runtime.context, in_role, connect=list(spec.inputs))
    outbox = open_outbox(spec, runtime)
    stats = runtime.stats
    inbox = Inbox(pull, spec.policy, stats.skipped)
    reorder = Reorderer(spec.policy, stats.skipped) if spec.reorder else None
    eos_seen: Counter[str] = Counter()
    ended: set[str] = set()

    def handle_frame(message: Message, in_ns: int) -> None:
        blocked_before = processor.blocked_ns()
        result = processor.process(message)
        if spec.delay_ms:
            time.sleep(spec.delay_ms / 1000)
        if result is None:
            return
        if not result.header.stamps or result.header.stamps[-1].stage != spec.name:  # publish and render stamp themselves
            stamp(result, spec.name, in_ns)
        stats.record_timing(in_ns, result.header.stamps[-1].out_ns, processor.blocked_ns() - blocked_before)
        if outbox is None or outbox.send(result):
            stats.record_out(message.header.source, time.monotonic_ns())

    try:
        if not runtime.ready_and_wait_for_start():
            return 0
        while not runtime.stopping and len(ended) < spec.sources:
            messages = inbox.receive()
            for old in inbox.superseded:
                processor.discard(old)
            inbox.superseded.clear()
            for message in messages:
                in_ns = time.monotonic_ns()
                source = message.header.source
                if message.header.kind is Kind.EOS:
                    eos_seen[source] += 1
                    if eos_seen[source] < spec.eos_per_source:
                        continue
                    for held in reorder.flush(source) if reorder else []:
                        handle_frame(held, time.monotonic_ns())
                    ended.add(source)
                    logger.info("%s: end of stream for %s after %d frames", spec.name, source,
                                stats.per_source[source])
                    processor.end_of_stream(message)
                    stamp(message, spec.name, in_ns)
                    if outbox is not None:
                        outbox.send(message)
                    continue
                stats.frames_in += 1
                for ready in reorder.push(message) if reorder else [message]:
                    handle_frame(ready, in_ns)
            runtime.tick()
        runtime.wait_until_downstream_done()
        return 0
    finally:
        processor.close()
        pull.close(linger=0)
        if outbox is not None:
            outbox.close(0 if runtime.stopping else EOS_LINGER_MS)
