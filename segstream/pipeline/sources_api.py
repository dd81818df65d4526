"""What the control API does to a running pipeline: add, remove and show its sources.

Runs on the supervisor's thread (``control_api.ApiRequests`` hands every request over), so
it changes the run's stages with nothing racing it.

Adding a source starts one capture process, laid out by the run's plan like the first
ones (``RunPlan.capture``), and tells the running stages (``add_source``): the stages that
read captures straight connect their input to its endpoints, and every stage accepts its
id. The other sources are not disturbed. The stages' specs are updated too, so a stage
restarted later reads the new source as well.

Removing one tells its capture to end the stream (``end_source``): its end of stream
goes through every stage like a source that ended by itself, each sink closes that
source's records, and once it went through every stage its capture is released
(``finish`` for that source). Its figures stay in the stats.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from segstream.errors import ConfigError
from segstream.pipeline.control import Command, CommandMessage
from segstream.pipeline.control_api import ApiError, ApiRequest
from segstream.pipeline.restarts import next_incarnation
from segstream.pipeline.source_allow import allowed, canonical_source
from segstream.pipeline.source_book import IdTaken, SourceEntry, SourceState, source_state, source_view
from segstream.pipeline.source_options import parse_source_options
from segstream.pipeline.source_release import release_source
from segstream.pipeline.spec import CaptureSettings, StageKind
from segstream.pipeline.telemetry.ledger import read_ledger
from segstream.pipeline.telemetry.stats import KEEP_ENDED_SOURCES

if TYPE_CHECKING:
    from segstream.pipeline.stage_process import StageProcess
    from segstream.pipeline.supervisor import Supervisor

logger = logging.getLogger(__name__)

RESEND_S = 0.5  # end_source and a capture's finish are sent again until its process is gone
REMOVE_GRACE_S = 5.0  # a removed source's capture that has not ended its stream by then is replaced
MAX_URI = 4096
SOURCE_FIELDS = ("uri", "id", "options")


class SourcesApi:
    """The routes of the control API over one supervisor.

    Args:
        supervisor: the run's supervisor (its stages, book of sources and commands).
    """

    def __init__(self, supervisor: "Supervisor") -> None:
        self.sup = supervisor
        self._sent: dict[str, float] = {}  # capture stage -> when end_source/finish was last sent
        self._joining: dict[str, float] = {}  # source -> when add_source was last sent

    # -- routes -------------------------------------------------------------------------

    def answer(self, request: ApiRequest) -> tuple[int, Any]:
        """The status and JSON body for ``request``.

        Raises:
            ApiError: a bad request, an unknown path or source, an id in use.
        """
        parts = request.path.split("/")[2:]  # /api/<parts>
        routes = {
            ("health",): {"GET": lambda: (200, self.health())},
            ("stats",): {"GET": lambda: (200, self.sup.snapshot())},
            ("sources",): {"GET": lambda: (200, self.sources()), "POST": lambda: (201, self.add(request.body))},
        }
        if len(parts) == 2 and parts[0] == "sources":
            sid = parts[1]
            methods = {"GET": lambda: (200, self.one(sid)), "DELETE": lambda: (200, self.remove(sid))}
        else:
            methods = routes.get(tuple(parts))
        if methods is None:
            raise ApiError(404, f"no such path {request.path[:100]!r}; paths: /api/health, /api/stats, /api/sources, "
                                f"/api/sources/ID")
        handler = methods.get(request.method)
        if handler is None:
            raise ApiError(405, f"{request.method} {request.path[:100]} is not supported; use {' or '.join(methods)}")
        return handler()

    def health(self) -> dict[str, Any]:
        """Whether the supervisor answers, and the run's state."""
        states = [self._state(entry).value for entry in self.sup.book.entries.values()]
        return {"status": "ok", "run_id": self.sup.run_id, "state": self.sup.state.value,
                "policy": self.sup.policy.value, "sources": len(states),
                "sources_active": sum(s not in (SourceState.ENDED.value, SourceState.FAILED.value) for s in states),
                "stages_alive": sum(s.process.poll() is None for s in self.sup.stages)}

    def sources(self) -> list[dict[str, Any]]:
        """Every source of the run, in the order they joined."""
        per_source = self.sup.snapshot().get("per_source", {})
        return [self._view(entry, per_source) for entry in self.sup.book.entries.values()]

    def one(self, sid: str) -> dict[str, Any]:
        """One source.

        Raises:
            ApiError: 404 for an id the run has no source of.
        """
        return self._view(self._entry(sid), self.sup.snapshot().get("per_source", {}))

    def add(self, body: Any) -> dict[str, Any]:
        """Start a capture for a new source; returns the source.

        Raises:
            ApiError: 400 for a body that is not a source request, 409 for an id in use
                or a run that is stopping.
        """
        sup = self.sup
        if sup.state.value not in ("starting", "running") or sup.plan is None:
            raise ApiError(409, f"the pipeline is {sup.state.value}; it takes no new sources")
        uri, sid, options = self._source_request(body)
        index = sup.book.added  # the next capture stage's number
        active = sum(1 for e in sup.book.entries.values() if self._state(e) not in (SourceState.ENDED, SourceState.FAILED))
        spec = sup.plan.capture(index, uri, sid, options, active + 1)
        connect = {reader: (endpoint,) for reader, endpoint in zip(sup.plan.capture_readers, spec.outputs)}
        for k, stage in enumerate(sup.stages):  # a stage restarted later reads the new source too
            if stage.spec.kind is not StageKind.CAPTURE:
                extra = connect.get(stage.spec.name, ())
                stage.spec = replace(stage.spec, source_ids=stage.spec.source_ids + (sid,),
                                     sources=stage.spec.sources + 1, inputs=stage.spec.inputs + extra)
        entry = SourceEntry(sid, uri, spec.name, connect=connect, joined=set())
        sup.book.add(entry)
        sup.stages.append(sup.spawn(spec))
        sup.command(CommandMessage(Command.ADD_SOURCE, source=sid, connect=connect))
        self._joining[sid] = time.monotonic()
        logger.info("source %s added (%s): %s", sid, uri, spec.name)
        return self._view(entry, {})

    def remove(self, sid: str) -> dict[str, Any]:
        """End a source's stream; returns the source (still ``running`` until its end of
        stream went through every stage, then ``ended``).

        Raises:
            ApiError: 404 for an id the run has no source of.
        """
        entry = self._entry(sid)
        if not entry.removed:
            entry.removed, entry.removed_at = True, time.monotonic()
            logger.info("source %s removed: its stream ends", sid)
            self.sup.command(CommandMessage(Command.END_SOURCE, source=sid))
            self._sent[entry.stage] = time.monotonic()
        return self._view(entry, self.sup.snapshot().get("per_source", {}))

    # -- the supervisor's loop ----------------------------------------------------------

    def tend(self) -> None:
        """Called on every pass of the supervisor's loop: repeat ``end_source`` to a
        removed source's capture until it ends its stream (it may not have listened yet),
        and release each capture whose end of stream went through every stage."""
        now = time.monotonic()
        others = self._non_captures()
        alive = {s.spec.name for s in self.sup.stages if s.spec.kind is not StageKind.CAPTURE and s.process.poll() is None}
        for sid, sent in list(self._joining.items()):
            entry = self.sup.book.entries[sid]
            if entry.joined is None or alive <= entry.joined or entry.ended_at:
                del self._joining[sid]  # every stage takes it (or it is already through)
            elif now - sent >= RESEND_S:  # a stage that was still starting may not have heard it
                self.sup.command(CommandMessage(Command.ADD_SOURCE, source=sid, connect=entry.connect))
                self._joining[sid] = now
        for entry in list(self.sup.book.entries.values()):
            capture = self._capture(entry)
            if capture is not None and capture.process.poll() == 0 and capture.restart_at is None \
                    and self.sup.book.ended(entry, others):
                release_source(self.sup, entry, capture)  # its stream went through: nothing of it stays
                self._sent.pop(entry.stage, None)
                continue
            if capture is None or capture.process.poll() is not None:
                continue
            if now - self._sent.get(entry.stage, 0.0) < RESEND_S:
                continue
            if capture.ended and self.sup.book.ended(entry, others):
                self.sup.command(CommandMessage(Command.FINISH, source=entry.source_id))
                self._sent[entry.stage] = now
            elif entry.removed and not capture.ended and now - entry.removed_at > REMOVE_GRACE_S and \
                    isinstance(capture.spec.settings, CaptureSettings) and not capture.spec.settings.removed:
                self._replace_deaf_capture(entry, capture)
            elif entry.removed and not capture.ended:
                self.sup.command(CommandMessage(Command.END_SOURCE, source=entry.source_id))
                self._sent[entry.stage] = now

    def _replace_deaf_capture(self, entry: SourceEntry, capture: "StageProcess") -> None:
        """A removed source's capture did not end its stream in ``REMOVE_GRACE_S`` (blocked
        opening its source): kill it, and start one last process of it that opens nothing
        and ends the stream as removed, so DELETE ends any source in a bounded time."""
        logger.warning("source %s: its capture did not end within %.0f s of its removal (blocked opening %s?); "
                       "killing it and ending its stream", entry.source_id, REMOVE_GRACE_S, entry.uri[:200])
        capture.process.kill()
        capture.process.wait()
        self.sup.restarter.retire(capture, self.sup.stages, self.sup.policy)
        spec = next_incarnation(capture.spec, read_ledger(capture.ledger_path), ())
        assert isinstance(spec.settings, CaptureSettings)
        spec = replace(spec, settings=replace(spec.settings, removed=True))
        self.sup.stages[self.sup.stages.index(capture)] = self.sup.spawn(spec)
        capture.remove_files()
        self._sent[entry.stage] = time.monotonic()

    # -- helpers ------------------------------------------------------------------------

    def _source_request(self, body: Any) -> tuple[str, str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, f"expected a JSON object such as {{\"uri\": \"rtsp://camera/stream\", \"id\": \"gate-1\"}}, "
                                f"found a JSON {type(body).__name__}")
        unknown = sorted(set(body) - set(SOURCE_FIELDS))
        if unknown:
            raise ApiError(400, f"unknown field(s) {unknown}; a source request has {list(SOURCE_FIELDS)}")
        uri = body.get("uri")
        if not isinstance(uri, str) or not uri.strip() or len(uri) > MAX_URI or "\x00" in uri:
            raise ApiError(400, f"'uri' must be a non-empty string of at most {MAX_URI} characters (a video file, "
                                f"folder, glob, test-pattern, rtsp://..., camera:N or dataset), found {str(uri)[:80]!r}")
        patterns = self.sup.config.api_allow
        if not allowed(uri.strip(), patterns):
            raise ApiError(403, f"source {uri.strip()[:200]!r} (as {canonical_source(uri.strip())[:200]!r}) is not one "
                                f"this run allows (--api-allow {' '.join(patterns)})")
        try:
            options = parse_source_options(body.get("options"))
        except ConfigError as exc:
            raise ApiError(400, f"bad 'options': {exc}") from None
        from segstream.pipeline.sources import default_source_id

        try:
            sid = self.sup.book.check_id(body["id"]) if body.get("id") is not None else \
                self.sup.book.new_id(default_source_id(uri))
        except IdTaken as exc:
            raise ApiError(409, str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return uri.strip(), sid, options

    def _entry(self, sid: str) -> SourceEntry:
        entry = self.sup.book.get(sid)
        if entry is None and self.sup.book.was_booked(sid):
            raise ApiError(404, f"source {sid[:80]!r} ended long ago: the run lists its sources and the last "
                                f"{KEEP_ENDED_SOURCES} that ended; its frames count in the run's totals")
        if entry is None:
            known = list(self.sup.book.entries)[:20]
            raise ApiError(404, f"no source {sid[:80]!r} in this run; its sources: {known}")
        return entry

    def _capture(self, entry: SourceEntry) -> "StageProcess | None":
        return next((s for s in self.sup.stages if s.spec.name == entry.stage), None)

    def _non_captures(self) -> tuple[str, ...]:
        return tuple(s.spec.name for s in self.sup.stages if s.spec.kind is not StageKind.CAPTURE)

    def _state(self, entry: SourceEntry) -> SourceState:
        capture = self._capture(entry)
        through = self.sup.book.ended(entry, self._non_captures())
        return source_state(entry, capture, self.sup.failed_sources, through)

    def _view(self, entry: SourceEntry, per_source: dict[str, Any]) -> dict[str, Any]:
        capture = self._capture(entry)
        figures = per_source.get(entry.source_id, {})
        error = self.sup.failed_sources.get(entry.source_id, "")
        view = source_view(entry, self._state(entry), figures, error)
        settings = capture.spec.settings if capture is not None else None
        if isinstance(settings, CaptureSettings):
            view["options"] = {"max_frames": settings.max_frames, "rate": settings.rate, "loop": settings.loop}
        return view
