"""``--metrics-port``: the run's figures (the same as stats.json) in the Prometheus text
exposition format, served over HTTP at ``/metrics`` from the supervisor process.

Times are in seconds, as Prometheus expects; histograms have the buckets of
``stats.BUCKETS_MS``.
"""

from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Iterable

from segstream.pipeline.http_server import BackgroundHttpServer, request_received
from segstream.pipeline.telemetry.timing import stage_latency

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if value == value else "NaN"


class _Families:
    """Collects samples per metric family so that each family is written once."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_text: str, labels: dict[str, object], value: float) -> None:
        """One sample; a counter's name gets its ``_total`` suffix (text format 0.0.4)."""
        name = f"{name}_total" if kind == "counter" else name
        family = self._families.setdefault(name, (kind, help_text, []))
        family[2].append(f"{name}{_labels(labels)} {_number(value)}")

    def histogram(self, name: str, help_text: str, labels: dict[str, object], data: dict[str, Any]) -> None:
        """``data``: ``stats.Histogram.to_json()`` in ms, written in seconds."""
        family = self._families.setdefault(name, ("histogram", help_text, []))
        for bound, count in data["buckets"]:
            le = "+Inf" if bound == "+Inf" else repr(float(bound) / 1000)
            family[2].append(f"{name}_bucket{_labels({**labels, 'le': le})} {count}")
        family[2].append(f"{name}_sum{_labels(labels)} {_number(data['sum'] / 1000)}")
        family[2].append(f"{name}_count{_labels(labels)} {data['count']}")

    def text(self) -> str:
        lines = []
        for name, (kind, help_text, samples) in self._families.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(lines) + "\n"


def _histograms(series: dict[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    for key, value in series.items():
        if isinstance(value, dict) and "histogram" in value:
            yield key, value["histogram"]


def prometheus_text(stats: dict[str, Any]) -> str:
    """The metrics of a run's stats (``Supervisor.snapshot()``, the stats.json schema)."""
    f = _Families()
    backend = stats.get("backend", {})
    f.add("segstream_run_info", "gauge", "The run: id, model, flow policy and backend (always 1).",
          {"run_id": stats["run_id"], "model": stats["model"], "policy": stats["policy"],
           "backend": backend.get("name", ""), "device": backend.get("device", "")}, 1)
    f.add("segstream_uptime_seconds", "gauge", "Seconds since the run started.", {}, stats["duration_s"])
    f.add("segstream_throughput_fps", "gauge", "Frames published per second.", {}, stats["throughput_fps"])
    # A source that ended and was released, and its capture, are no longer exported (their
    # figures stay in stats.json): a service whose cameras come and go exports what runs.
    gone = {sid for sid, src in stats["per_source"].items() if src.get("released")}
    gone_stages = set(stats.get("released_stages", ()))
    for sid, src in stats["per_source"].items():
        if sid in gone:
            continue
        f.add("segstream_frames_in", "counter", "Frames read from the source.", {"source": sid}, src["frames_in"])
        f.add("segstream_frames_published", "counter", "Masks published.", {"source": sid},
              src["frames_published"])
        f.add("segstream_reconnects", "counter", "Reconnections of a live source.", {"source": sid},
              src.get("reconnects", 0))
    for stage, reasons in stats["frames_skipped"]["by_stage"].items():
        if stage in gone_stages:
            continue
        for reason, count in reasons.items():
            f.add("segstream_frames_skipped", "counter", "Frames a stage did not pass on, by reason.",
                  {"stage": stage, "reason": reason}, count)
    for name, st in stats["stages"].items():
        if name in gone_stages:
            continue
        f.add("segstream_stage_frames_in", "counter", "Frames a stage received.", {"stage": name},
              st.get("frames_in", 0))
        f.add("segstream_stage_frames_out", "counter", "Frames a stage sent on.", {"stage": name},
              st.get("frames_out", 0))
        f.add("segstream_stage_restarts", "counter", "Times the supervisor restarted a stage's process.",
              {"stage": name}, stats.get("restarts", {}).get(name, 0))
    for kind, parts in stage_latency(stats).items():
        if kind in gone_stages or kind not in stats["stages"]:  # a capture released long ago
            continue
        f.histogram("segstream_stage_seconds", "Time a frame spent in a stage (receive to send).", {"stage": kind},
                    parts["stage"]["histogram"])
        f.histogram("segstream_queue_seconds", "Time a frame waited before a stage (previous send to receive).",
                    {"stage": kind}, parts["queue"]["histogram"])
    for sid, hist in _histograms(stats["latency_ms"].get("by_source", {})):
        if sid in gone:
            continue
        f.histogram("segstream_latency_seconds", "End-to-end latency from capture to publish.", {"source": sid}, hist)
    for sid, hist in _histograms(stats["stages"].get("render", {}).get("latency_by_source_ms", {})):
        if sid in gone or sid not in stats["per_source"]:
            continue
        f.histogram("segstream_render_latency_seconds", "End-to-end latency from capture to the rendered overlay.",
                    {"source": sid}, hist)
    evaluation = stats.get("eval")
    if evaluation and "instances" in evaluation:
        overall = evaluation["instances"]["all"]
        f.add("segstream_eval_frames", "counter", "Frames scored against ground truth.", {}, overall["frames"])
        for kind in ("bbox", "segm"):
            for key in ("ap", "ap50", "ap75"):
                f.add(f"segstream_eval_{kind}_{key}", "gauge", f"COCO {kind} {key} over the frames scored so far.",
                      {}, overall[kind][key])
    elif evaluation:
        f.add("segstream_eval_frames", "counter", "Frames scored against ground truth.", {}, evaluation["frames"])
        for key in ("miou", "pixel_accuracy", "mean_f1", "category_miou"):
            if evaluation.get(key) is not None:
                f.add(f"segstream_eval_{key}", "gauge", f"{key} over the frames scored so far.", {},
                      evaluation[key])
        for cls, figures in evaluation.get("classes", {}).items():
            if figures["iou"] is not None:
                f.add("segstream_eval_class_iou", "gauge", "IoU per class so far.", {"class": cls}, figures["iou"])
    return f.text()


class MetricsServer:
    """Serves ``provider()`` (the metrics text) at ``http://HOST:PORT/metrics``.

    Raises:
        OSError: the port cannot be bound (the message says which and how to fix it).
    """

    def __init__(self, host: str, port: int, provider: Callable[[], str]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                request_received(self)
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "metrics are at /metrics")
                    return
                try:
                    body = provider().encode()
                except Exception:  # a scrape must never take the run down
                    logger.exception("metrics: could not render")
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: object) -> None:
                logger.debug("metrics: " + fmt, *args)

        try:
            self._server = BackgroundHttpServer(host, port, Handler, "metrics")
        except OSError as exc:
            raise OSError(f"--metrics-port {port}: cannot listen on {host}:{port} ({exc.strerror}); choose a free "
                          f"port") from None
        logger.info("metrics: http://%s:%d/metrics", host, self.port)

    @property
    def port(self) -> int:
        return self._server.port

    def close(self) -> None:
        self._server.close()
