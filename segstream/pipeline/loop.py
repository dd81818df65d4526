"""The receive-process-send loop of the middle stages, and the helpers every stage uses
to open its output sockets and ring."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Callable, Protocol

import zmq

from segstream.engines.metadata import ModelMetadata
from segstream.pipeline.control import EventKind
from segstream.pipeline.runtime import StageRuntime
from segstream.pipeline.sinks import SinkContext, SinkSet
from segstream.pipeline.spec import StageSpec
from segstream.pipeline.telemetry.stats import SkipCounter
from segstream.pipeline.wire.keys import CurveServer
from segstream.pipeline.wire.messages import Kind, Message, Stamp, eos
from segstream.pipeline.wire.payloads import PayloadWriter, mode_for_endpoint
from segstream.pipeline.wire.policies import POLL_MS, CatchUp, FlowPolicy, Inbox, Outbox
from segstream.pipeline.wire.reorder import Reorderer
from segstream.pipeline.wire.transport import Role, make_socket

logger = logging.getLogger(__name__)

CARRIED = ("frame", "gt", "gt_instances")  # parts every stage passes on for the ones behind it
EOS_LINGER_MS = 2000  # what is still queued at a normal close (after wait_until_downstream_done)


class Processor(Protocol):
    """The per-frame work of a middle stage.

    Attributes:
        finishes_frames: a frame is done once ``process`` returned it (publish: the mask
            is out); the stage counts it as sent on even if the stage behind does not
            take it, which is counted apart (``handed_over_skipped``).
    """

    finishes_frames: bool

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
    if not spec.outputs or spec.ring is None:
        raise ValueError(f"stage {spec.name} has no output to write payloads for")
    return PayloadWriter(mode_for_endpoint(spec.outputs[0], spec.payloads.value), spec.ring.name,
                         len(spec.ring.readers), spec.ring.slots, lossless=spec.policy is FlowPolicy.LOSSLESS)


def open_outbox(spec: StageSpec, runtime: StageRuntime, skipped: SkipCounter | None = None) -> Outbox | None:
    """Bind the stage's output sockets; None for the last stage. Frames dropped on the
    way count in ``skipped`` (default: the stage's skipped)."""
    if not spec.outputs:
        return None
    role = Role.STAGE_OUT_LIVE if spec.policy is FlowPolicy.LIVE else Role.STAGE_OUT_LOSSLESS
    sockets = []
    try:
        for endpoint in spec.outputs:
            sockets.append(make_socket(runtime.context, role, bind=endpoint,
                                       server=spec.keys.server if spec.keys else None, guard=runtime.guard))
    except Exception:
        for sock in sockets:
            sock.close(linger=0)
        raise
    return Outbox(sockets, spec.policy, runtime.stats.skipped if skipped is None else skipped,
                  lambda: runtime.stopping)


def open_sinks(spec: StageSpec, runtime: StageRuntime, uris: tuple[str, ...], metadata: ModelMetadata,
               per_source_dirs: bool, live_figures: Callable[[], dict[str, Any]] = dict,
               publish_keys: CurveServer | None = None, sink_maxlen: int = 10_000,
               sink_budget_mb: int = 1024, sink_wait_s: float = 30.0) -> SinkSet:
    """The sinks a stage drives, with the context they may use; their figures are copied
    into every report the stage sends (the final one included)."""
    sinks = SinkSet(uris, SinkContext(
        per_source_dirs=per_source_dirs, sources=spec.sources, class_names=tuple(metadata.class_names),
        palette=tuple(tuple(c) for c in metadata.palette), ignore_index=metadata.ignore_index,
        zmq_context=runtime.context, stopping=lambda: runtime.stopping, skipped=runtime.stats.skipped,
        live_figures=live_figures, model=metadata.name, publish_keys=publish_keys, guard=runtime.guard,
        lossless=spec.policy is FlowPolicy.LOSSLESS, sink_maxlen=sink_maxlen, sink_budget_mb=sink_budget_mb,
        wait_s=sink_wait_s))
    runtime.before_report(lambda: setattr(runtime.stats, "sinks", sinks.figures()))
    return sinks


def stamp(message: Message, stage: str, in_ns: int) -> None:
    """Append this stage's timing stamp to ``message``."""
    message.header.stamps.append(Stamp(stage, in_ns, time.monotonic_ns()))


def join_source(runtime: StageRuntime, pull: Any, known: set[str], connected: dict[str, tuple[str, ...]],
                source: str, endpoints: tuple[str, ...]) -> None:
    """A source joined the running pipeline: accept its frames, and connect the input to
    the endpoints its capture binds (for the stages that read captures straight; kept in
    ``connected`` until its end of stream); said to the supervisor each time (it repeats
    ``add_source`` until every stage said so)."""
    if source not in known:
        known.add(source)
        for endpoint in endpoints:
            pull.connect(endpoint)
        connected[source] = endpoints
        logger.info("%s: source %s joined%s", runtime.spec.name, source,
                    f" ({', '.join(endpoints)})" if endpoints else "")
    runtime.emit(EventKind.SOURCE_JOINED, source=source)


def leave_source(pull: Any, connected: dict[str, tuple[str, ...]], source: str) -> None:
    """A source that joined while running ended: disconnect from its capture's endpoints,
    which are gone (ZeroMQ would otherwise try to reconnect to them for the whole run)."""
    for endpoint in connected.pop(source, ()):
        try:
            pull.disconnect(endpoint)
        except zmq.ZMQError:  # never connected (a restarted stage has it in its spec)
            pass


def run_middle_stage(spec: StageSpec, runtime: StageRuntime, processor: Processor) -> int:
    """Receive, process and send until every source ended or a stop is requested.

    Returns the process exit code (0 on end of stream and on a requested stop).
    """
    in_role = Role.STAGE_IN_LIVE if spec.policy is FlowPolicy.LIVE else Role.STAGE_IN_LOSSLESS
    pull = make_socket(runtime.context, in_role, connect=list(spec.inputs),
                       client=spec.keys.client if spec.keys else None)
    stats = runtime.stats
    finishes = processor.finishes_frames
    outbox = open_outbox(spec, runtime, stats.handed_over_skipped if finishes else None)
    catch_up = CatchUp()
    inbox = Inbox(pull, spec.policy, stats.skipped, catch_up)
    reorder = Reorderer(spec.policy, stats.skipped, restarted=spec.incarnation > 0) if spec.reorder else None
    eos_seen: Counter[str] = Counter()
    ended: set[str] = set()
    known = set(spec.source_ids)  # grows as sources join a running pipeline (``add_source``)
    connected: dict[str, tuple[str, ...]] = {}  # joined while running: source -> its capture's endpoints
    check_source = bool(spec.source_ids) or spec.open_ended

    batch = getattr(processor, "batch", None)  # inference: frames of several sources per engine call

    def handle_frame(message: Message, in_ns: int) -> None:
        blocked_before = processor.blocked_ns()
        started_ns = time.monotonic_ns()
        result = processor.process(message)
        if spec.delay_ms:
            time.sleep(spec.delay_ms / 1000)
        finish_frame(message, result, in_ns, processor.blocked_ns() - blocked_before)
        catch_up.note(time.monotonic_ns() - started_ns)

    def handle_batch(items: list[tuple[Message, int]]) -> None:
        blocked_before = processor.blocked_ns()
        started_ns = time.monotonic_ns()
        results = processor.process_batch([message for message, _ in items])  # type: ignore[attr-defined]
        if spec.delay_ms:
            time.sleep(spec.delay_ms / 1000)
        blocked = (processor.blocked_ns() - blocked_before) // len(items)
        for (message, in_ns), result in zip(items, results):
            finish_frame(message, result, in_ns, blocked)
        catch_up.note((time.monotonic_ns() - started_ns) // len(items))

    def flush_batches(only_due: bool) -> None:
        """Run the batches that are due (``only_due``), or everything waiting."""
        if batch is None:
            return
        if not only_due:
            items = batch.flush()
            for k in range(0, len(items), batch.size):
                handle_batch(items[k:k + batch.size])
            return
        while len(batch) and batch.ready(time.monotonic_ns()):
            handle_batch(batch.take(time.monotonic_ns()))

    def finish_frame(message: Message, result: Message | None, in_ns: int, blocked_ns: int) -> None:
        if result is None:
            return
        if not result.header.stamps or result.header.stamps[-1].stage != spec.name:  # publish and render stamp themselves
            stamp(result, spec.name, in_ns)
        stats.record_timing(in_ns, result.header.stamps[-1].out_ns, blocked_ns)
        if finishes or outbox is None:
            stats.record_out(message.header.source, time.monotonic_ns())
            if outbox is not None:
                outbox.send(result)
            return
        stats.leaving()
        if outbox.send(result):
            stats.record_out(message.header.source, time.monotonic_ns())
        else:
            stats.stayed()

    try:
        if not runtime.ready_and_wait_for_start():
            return 0
        for source in spec.ended_sources:  # ended before this process (a restart) started
            ended.add(source)
            if outbox is not None:
                outbox.send(eos(source, restarted=True))
            # said again: the process before may have died before it said so, and the
            # supervisor releases a source only once every stage passed its end on
            runtime.emit(EventKind.SOURCE_ENDED, source=source)
        while not runtime.stopping and (spec.open_ended or len(ended) < max(spec.sources, len(known))):
            for source, endpoints in runtime.take_added():
                join_source(runtime, pull, known, connected, source, endpoints)
            if runtime.take_resync() and reorder is not None:  # a restarted worker lost what it held
                for held in reorder.resync():
                    handle_frame(held, time.monotonic_ns())
            for held in reorder.expire() if reorder is not None else []:  # gaps nothing will fill
                handle_frame(held, time.monotonic_ns())
            due = batch.deadline_ns() if batch is not None else None
            messages = inbox.receive(POLL_MS if due is None else max(0, (due - time.monotonic_ns()) // 1_000_000))
            for old in inbox.superseded:
                processor.discard(old)
            inbox.superseded.clear()
            for message in messages:
                in_ns = time.monotonic_ns()
                source = message.header.source
                if check_source and source not in known:
                    runtime.refuse(None, "unknown_source", f"source {source!r} is not one of {sorted(known)}")
                    if message.header.kind is not Kind.EOS:
                        processor.discard(message)  # its slots upstream: a lossless writer waits for them
                    continue
                if message.header.kind is Kind.EOS:
                    if source in ended:  # sent again by a restarted stage
                        continue
                    eos_seen[source] += 1
                    if eos_seen[source] < spec.eos_per_source:
                        continue
                    for held in reorder.flush(source) if reorder else []:
                        handle_frame(held, time.monotonic_ns())
                    flush_batches(only_due=False)  # its last frames go before its end
                    ended.add(source)
                    logger.info("%s: end of stream for %s after %d frames", spec.name, source,
                                stats.per_source[source])
                    processor.end_of_stream(message)
                    stamp(message, spec.name, in_ns)
                    if outbox is not None:
                        outbox.send(message)
                    runtime.tick(now_too=True)  # the source's final figures, before the event that it ended
                    runtime.emit(EventKind.SOURCE_ENDED, source=source)
                    leave_source(pull, connected, source)
                    stats.source_ended(source)
                    continue
                stats.count_in()
                if batch is not None:
                    batch.note_fps(message.header.meta.get("fps"))
                    superseded = batch.add(source, (message, in_ns), in_ns)
                    if superseded is not None:  # live: a newer frame of its source came first
                        stats.skipped.add("superseded", source)
                        processor.discard(superseded[0])
                    continue
                for ready in reorder.push(message) if reorder else [message]:
                    handle_frame(ready, in_ns)
            flush_batches(only_due=True)
            runtime.tick()
        runtime.wait_until_downstream_done()
        return 0
    finally:
        processor.close()
        pull.close(linger=0)
        if outbox is not None:
            outbox.close(0 if runtime.stopping else EOS_LINGER_MS)
