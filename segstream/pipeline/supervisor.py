"""The supervisor: starts every stage process, watches them, stops them, collects stats.

Lifecycle: STARTING (stages load, report ready) -> RUNNING (start sent) -> STOPPING ->
DONE. A stage that dies while the run is running is restarted (``restarts.py``; the
others go on) until its restart budget is spent; then, or with ``--restart never``, or
before the run is running, the run stops with an error naming the stage. Whatever
happens, at the end no stage process, ipc socket file or shared-memory segment of the run
is left.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import zmq

from segstream.engines.resolve import InferenceModel
from segstream.errors import MessageError, PipelineFailed, SegstreamError
from segstream.log_throttle import LogThrottle
from segstream.pipeline.config import PipelineConfig, api_address
from segstream.pipeline.control import Command, CommandMessage, EventKind, decode_event, encode
from segstream.pipeline.control_api import ApiRequests, ControlApi
from segstream.pipeline.graph import RunPlan, plan_run
from segstream.pipeline.preflight import default_policy
from segstream.pipeline.restarts import Restarter, next_incarnation
from segstream.pipeline.run_folder import make_run_dir, sweep_run
from segstream.pipeline.source_book import SourceBook, SourceEntry
from segstream.pipeline.source_release import ReleasedCaptures
from segstream.pipeline.sources_api import SourcesApi
from segstream.pipeline.spec import CaptureSettings, StageSpec
from segstream.pipeline.stage_process import StageProcess, exit_reason, spawn, stop_processes
from segstream.pipeline.telemetry.ledger import read_ledger
from segstream.pipeline.telemetry.prometheus import MetricsServer, prometheus_text
from segstream.pipeline.telemetry.run_stats import RunFacts, assemble_stats, fallback_stats, pipeline_figures
from segstream.pipeline.telemetry.stats import StageReport
from segstream.pipeline.telemetry.status_line import StatusLine
from segstream.pipeline.wire.choices import RestartPolicy, Transport
from segstream.pipeline.wire.keys import RunKeys
from segstream.pipeline.wire.security import PeerGuard
from segstream.pipeline.wire.transport import Role, make_socket

logger = logging.getLogger(__name__)

STOP_GRACE_S = 1.2  # after a stop request, stages get this long before SIGKILL
START_RESEND_S = 0.1
BROADCAST_S = 1.0  # how often the supervisor sends pipeline-wide figures to the stages


class RunState(str, Enum):
    """Lifecycle of a run."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    DONE = "done"


@dataclass
class RunResult:
    """Outcome of a run: exit code, collected stats, the error if any, and whether every
    stage started (a run that failed before has written nothing)."""

    exit_code: int
    stats: dict[str, Any]
    error: str = ""
    started: bool = False


class Supervisor:
    """Runs one pipeline to completion, failure or stop.

    Args:
        config: the run configuration.
        model: what the inference stages load, on which backend (``resolve_inference``).
    """

    def __init__(self, config: PipelineConfig, model: InferenceModel) -> None:
        self.config = config
        self.model = model
        self.metadata = model.metadata
        self.policy = config.policy or default_policy(config.sources)
        self.run_id = secrets.token_hex(4)
        self.state = RunState.STARTING
        self._stop_requested = False
        self._stop_signal = 0
        self.stages: list[StageProcess] = []
        self.failed_sources: dict[str, str] = {}  # source id -> why (the other sources carry on)
        self.malformed_events = 0  # control events refused on receipt
        self._refusals = LogThrottle()
        self._guard: PeerGuard | None = None  # refuses tcp peers without the run's key
        self._started = False  # every stage started
        self.restarter = Restarter(config.max_restarts)
        self.released = ReleasedCaptures()  # the captures of sources that ended, released (--api)
        self._run_dir = Path()
        self._env: dict[str, str] = {}
        self.book = SourceBook()
        self.api_port = 0  # where the control API listens (--api)
        self._api_requests = ApiRequests()
        self.sources_api = SourcesApi(self)
        self.plan: RunPlan | None = None  # the run's layout (lays out the captures of sources added later)
        self._commands: zmq.Socket | None = None

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self._stop_requested:
            logger.warning("%s received: stopping the pipeline", signal.Signals(signum).name)
        self._stop_requested = True
        self._stop_signal = signum

    def run(self) -> RunResult:
        """Start the stages, supervise them and clean up; never leaves anything behind."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        run_dir = make_run_dir(self.run_id)
        context = zmq.Context()
        self._started_wall = started_wall = time.time()
        self._t0 = t0 = time.monotonic()
        error = ""
        control = commands = metrics = api = None
        self._status = None if self.config.quiet else StatusLine(max_frames=self.config.max_frames,
                                                                 loop=self.config.loop)
        try:
            if self.config.metrics_port:
                try:
                    metrics = MetricsServer(self.config.metrics_host, self.config.metrics_port,
                                            lambda: prometheus_text(self.snapshot()))
                except OSError as exc:
                    raise PipelineFailed(str(exc)) from None
            keys = RunKeys.generate() if self.config.transport is Transport.TCP else None
            plan = plan_run(self.config, self.policy, self.run_id, run_dir, self.model, keys)
            self._guard = PeerGuard(context)
            server = keys.server if keys else None
            control = make_socket(context, Role.CONTROL_IN, bind=plan.control, server=server, guard=self._guard)
            commands = make_socket(context, Role.COMMANDS_PUB, bind=plan.commands, server=server, guard=self._guard)
            self.plan, self._commands = plan, commands
            self._start(plan, run_dir)
            if self.config.api:
                host, port = api_address(self.config.api, self.config.api_token)
                api = ControlApi(host, port, self.config.api_token, self._api_requests)
                self.api_port = api.port
            error = self._supervise(control, commands)
        except PipelineFailed as exc:
            error = str(exc)
        except SegstreamError:
            raise  # a refusal with its own message (a wrong setting found while planning): the CLI prints it
        except Exception as exc:  # noqa: BLE001 - a bug here must not cost the run its clean-up or stats
            logger.exception("the supervisor failed")
            error = f"internal error in the supervisor: {type(exc).__name__}: {exc}"
        finally:
            if api is not None:
                api.close()
            if self._status is not None:
                if self.state is RunState.RUNNING:
                    self._status.update(self.snapshot, final=True)  # the figures at the end
                self._status.close()
            self._shutdown(commands)
            if control is not None:
                self._drain_events(control, 0.2, until_all_done=True)
                control.close(linger=0)
            if commands is not None:
                commands.close(linger=0)
            if self._guard is not None:
                self._guard.close()
            context.term()
            logger.debug("removed the run's folder and shared memory: %s", sweep_run(run_dir, self.run_id))
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if metrics is not None:
                metrics.close()
        if not error and self.failed_sources and not self.config.api:
            # (with --api, a source that fails is the API's to report: the service goes on)
            error = "; ".join(f"source {sid} failed: {why}" for sid, why in self.failed_sources.items())
        stopped = self._stop_requested and not error
        stats = self._collect_stats(started_wall, time.monotonic() - t0, stopped, error)
        if error:
            code = 1
        elif stopped:
            code = 128 + (self._stop_signal or signal.SIGINT)
        else:
            code = 0
        stats["exit_code"] = code
        return RunResult(code, stats, error, self._started)

    # -- starting ---------------------------------------------------------------------

    def _start(self, plan: RunPlan, run_dir: Path) -> None:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self._status is not None and self._status.tty and env.get("SEGSTREAM_LOG_LEVEL", "INFO") == "INFO":
            # The status line on the terminal says what the stages' INFO lines would, and
            # their lines would break it; warnings and errors still show.
            env["SEGSTREAM_LOG_LEVEL"] = "WARNING"
        self._run_dir, self._env = run_dir, env
        self.stages.extend(self.spawn(spec) for spec in plan.stages)
        for spec in plan.stages:
            if isinstance(spec.settings, CaptureSettings):
                self.book.add(SourceEntry(spec.settings.source_id, spec.settings.source, spec.name))
        logger.info("run %s: %d stages started (%s flow)", self.run_id, len(self.stages), self.policy.value)

    def spawn(self, spec: StageSpec) -> StageProcess:
        """Start the process of ``spec`` (its spec file in the run folder)."""
        return spawn(spec, self._run_dir, self._env)

    def command(self, message: CommandMessage) -> None:
        """Send ``message`` to every stage (each takes what is meant for it)."""
        if self._commands is not None:
            self._commands.send(encode(message))

    # -- supervising ------------------------------------------------------------------

    def _by_name(self, name: str) -> StageProcess | None:
        return next((s for s in self.stages if s.spec.name == name), None)

    def _handle_event(self, raw: bytes) -> None:
        try:
            event = decode_event(raw)
        except MessageError as exc:
            self.malformed_events += 1
            if self._refusals.allow(exc.reason):
                logger.warning("ignored a malformed control event (counted; logged at most every %.0f s): %s",
                               self._refusals.every_s, exc)
            return
        if self.plan is not None and not event.carries(self.plan.control_token):
            self.malformed_events += 1  # not from a process of this run: a forgery, or another run's stage
            if self._refusals.allow("bad_token"):
                logger.warning("ignored a control event without this run's token: %s from %r (counted)",
                               event.kind.value, event.stage[:80])
            return
        stage = self._by_name(event.stage)
        if stage is None:
            self.malformed_events += 1
            if self._refusals.allow("unknown_stage"):
                logger.warning("ignored a control event from unknown stage %r", event.stage[:80])
            return
        kind = event.kind
        if kind is EventKind.READY:
            stage.ready = True
        elif kind is EventKind.STARTED:
            stage.started = True
        elif kind is EventKind.ENDED:
            stage.ended = True
        elif kind in (EventKind.STATS, EventKind.DONE):
            stage.report = event.report or stage.report
            stage.done = stage.done or kind is EventKind.DONE
        elif kind is EventKind.ERROR:
            stage.error = event.message
        elif kind is EventKind.SOURCE_FAILED:
            self.failed_sources[event.source or stage.spec.name] = event.message
        elif kind in (EventKind.SOURCE_ENDED, EventKind.SOURCE_JOINED):
            self.book.note(event.source, stage.spec.name, ended=kind is EventKind.SOURCE_ENDED)

    def _drain_events(self, control: zmq.Socket, timeout_s: float, until_all_done: bool = False) -> None:
        """Handle events for ``timeout_s`` (or until every stage sent its final report)."""
        deadline = time.monotonic() + timeout_s
        while not (until_all_done and all(s.done for s in self.stages)):
            remaining = int(max(deadline - time.monotonic(), 0) * 1000)
            if not control.poll(min(remaining, 50)):
                if time.monotonic() >= deadline:
                    return
                continue
            while True:
                try:
                    self._handle_event(control.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
            if time.monotonic() >= deadline:  # a flood of events cannot hold the supervisor here
                return

    def _check_deaths(self, commands: zmq.Socket | None = None) -> str:
        """The error that ends the run, if a stage died and is not to be restarted;
        schedules the restart of the others (``commands`` given)."""
        now = time.monotonic()
        for stage in self.stages:
            code = stage.process.poll()
            if code is None or code == 0 or stage.restart_at is not None:
                continue
            detail = f": {stage.error}" if stage.error else ""
            death = f"stage '{stage.spec.name}' (pid {stage.process.pid}) {exit_reason(code)}{detail}"
            if commands is None or self.state is not RunState.RUNNING or self.config.restart is RestartPolicy.NEVER:
                return death
            wait, verdict = self.restarter.after_death(stage, death, now)
            if wait is None:
                return verdict
            if stage.give_up:
                logger.error("source %s failed: %s", stage.spec.settings.source_id, stage.give_up)
            else:
                logger.warning("%s; restarting it in %.2f s", death, wait)
            self.restarter.retire(stage, self.stages, self.policy)
            stage.restart_at = now + wait
            commands.send(encode(CommandMessage(Command.RESYNC)))
        for k, stage in enumerate(self.stages):
            if stage.restart_at is not None and now >= stage.restart_at:
                ended = tuple(s.spec.settings.source_id for s in self.stages
                              if isinstance(s.spec.settings, CaptureSettings) and (s.ended or s.process.poll() == 0))
                spec = next_incarnation(stage.spec, read_ledger(stage.ledger_path), ended, stage.give_up)
                self.stages[k] = self.spawn(spec)
                stage.remove_files()  # the dead incarnation's spec and ledger (read above)
                logger.info("stage %s restarted (pid %d)", spec.name, self.stages[k].process.pid)
        return ""

    def _supervise(self, control: zmq.Socket, commands: zmq.Socket) -> str:
        deadline = time.monotonic() + self.config.ready_timeout_s
        last_start = last_broadcast = 0.0
        while True:
            self._drain_events(control, 0.05)
            self._api_requests.serve(self.sources_api.answer)
            if self.config.api:
                self.sources_api.tend()
            if self.state is RunState.RUNNING and time.monotonic() - last_broadcast > BROADCAST_S:
                last_broadcast = time.monotonic()
                commands.send(encode(CommandMessage(Command.FIGURES, pipeline_figures(self.snapshot()))))
            if self.state is RunState.RUNNING and self._status is not None:
                self._status.update(self.snapshot)
            if self._stop_requested:
                return ""
            death = self._check_deaths(commands)
            if death:
                # Let the other stages' last events arrive, so the error names the cause.
                self._drain_events(control, 0.1)
                return self._check_deaths(commands) or death
            if self.state is RunState.RUNNING and any(s.ready and not s.started for s in self.stages):
                now = time.monotonic()  # a restarted stage is ready: let it start
                if now - last_start >= START_RESEND_S:
                    commands.send(encode(CommandMessage(Command.START)))
                    last_start = now
            if self.state is RunState.STARTING:
                if all(s.ready for s in self.stages):
                    now = time.monotonic()
                    if now - last_start >= START_RESEND_S:
                        commands.send(encode(CommandMessage(Command.START)))
                        last_start = now
                    if all(s.started for s in self.stages):
                        self.state = RunState.RUNNING
                        self._started = True
                        logger.info("run %s: running", self.run_id)
                elif time.monotonic() > deadline:
                    waiting = [s.spec.name for s in self.stages if not s.ready]
                    return f"stages {waiting} did not become ready within {self.config.ready_timeout_s:.0f} s"
            if self.state is RunState.RUNNING and all(s.ended or s.process.poll() == 0 for s in self.stages):
                # Every stage forwarded its end of stream and the sinks are done: release
                # the stages that keep their sockets open for the ones behind them.
                commands.send(encode(CommandMessage(Command.FINISH)))
            if all(s.process.poll() == 0 for s in self.stages):
                self._drain_events(control, 0.1)
                return ""

    # -- stopping ---------------------------------------------------------------------

    def _shutdown(self, commands: zmq.Socket | None) -> None:
        alive = [s for s in self.stages if s.process.poll() is None]
        if not alive:
            return
        self.state = RunState.STOPPING
        if commands is not None:
            try:
                commands.send(encode(CommandMessage(Command.STOP)), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        stop_processes(alive, STOP_GRACE_S)
        self.state = RunState.DONE

    # -- stats ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The stats so far (the stats.json schema), for the status line and metrics."""
        return self._collect_stats(self._started_wall, time.monotonic() - self._t0, False, "", final=False)

    def _reports(self) -> dict[str, StageReport]:
        return {**self.released.reports(), **self.restarter.reports(self.stages)}

    def _collect_stats(self, started_wall: float, duration_s: float, stopped: bool, error: str,
                       final: bool = True) -> dict[str, Any]:
        facts = RunFacts(self.run_id, started_wall, duration_s, self.policy, self.model,
                         tuple(entry.uri for entry in self.book.entries.values()),
                         self.released.captures() + tuple((s.spec.name, s.spec.settings) for s in self.stages
                                                          if isinstance(s.spec.settings, CaptureSettings)),
                         dict(self.failed_sources), self.malformed_events,
                         {**self.released.restarts(), **self.restarter.restarts()}, final,
                         self._guard.refused() if self._guard is not None else 0,
                         frozenset(name for name, _ in self.released.captures()))
        try:
            return assemble_stats(facts, self._reports(), stopped, error)
        except Exception as exc:  # noqa: BLE001 - a bug in the figures must not cost the run its clean-up
            logger.exception("could not assemble the run's figures")
            return fallback_stats(self.run_id, duration_s, stopped, error or f"stats assembly failed: {exc}")
