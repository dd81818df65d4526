"""``view:HOST:PORT``, the live view in a browser: the overlay as an MJPEG stream, and the live numbers.

Served by the render stage (``--view [HOST:PORT]``, default ``127.0.0.1:8080``):

- ``/``: the page (the overlay beside FPS, latency, per-stage timings, frames skipped and
  the classes present with their share, and the sources: each appears with its first
  frame and goes at its end of stream, so sources added and removed while the pipeline
  runs come and go; click one to watch it);
- ``/stream.mjpg``: ``multipart/x-mixed-replace`` JPEG frames, the newest overlay of any
  source each; ``/stream.mjpg?source=ID``: of that source only;
- ``/stats.json``: the numbers the page shows.

Each viewer is one thread that lives as long as its connection: closing the tab ends
it. Several browsers may watch at once.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from segstream.errors import OutputError
from segstream.pipeline.http_server import BackgroundHttpServer, request_received
from segstream.pipeline.instance_overlay import instance_colour
from segstream.pipeline.sinks import BaseSink, SinkContext, SinkResult

logger = logging.getLogger(__name__)

BOUNDARY = "segstreamframe"
JPEG_QUALITY = 80

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>segstream live view</title>
<style>
 body { margin: 0; background: #111418; color: #e8eaed; font: 14px/1.4 system-ui, sans-serif; }
 header { padding: 10px 18px; background: #1b1f24; display: flex; gap: 18px; align-items: baseline; }
 header h1 { font-size: 16px; margin: 0; font-weight: 600; }
 header span { color: #9aa0a6; }
 main { display: flex; gap: 18px; padding: 18px; align-items: flex-start; }
 #video { flex: 1; min-width: 0; }
 #video img { width: 100%; border-radius: 6px; background: #000; display: block; }
 aside { width: 300px; flex: none; }
 .cards { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; margin-bottom: 14px; }
 .card { background: #1b1f24; border-radius: 6px; padding: 8px 10px; }
 .card b { display: block; font-size: 22px; font-weight: 600; }
 .card small { color: #9aa0a6; }
 h2 { font-size: 13px; color: #9aa0a6; text-transform: uppercase; letter-spacing: .05em; margin: 14px 0 6px; }
 table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
 td { padding: 2px 4px; } td.n { text-align: right; }
 .swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
 #sources tr { cursor: pointer; } #sources tr.on td:first-child { color: #8ab4f8; font-weight: 600; }
 .bar { height: 4px; background: #3c4043; border-radius: 2px; } .bar i { display: block; height: 4px; border-radius: 2px; }
</style></head>
<body>
<header><h1>segstream</h1><span id="model"></span><span id="source"></span></header>
<main>
 <div id="video"><img id="stream" src="/stream.mjpg" alt="overlay"></div>
 <aside>
  <div class="cards">
   <div class="card"><b id="fps">-</b><small>frames / s</small></div>
   <div class="card"><b id="frame">-</b><small>frame</small></div>
   <div class="card"><b id="lat50">-</b><small>latency p50 ms</small></div>
   <div class="card"><b id="lat95">-</b><small>latency p95 ms</small></div>
   <div class="card"><b id="skipped">-</b><small>frames skipped</small></div>
   <div class="card"><b id="viewers">-</b><small>viewers</small></div>
   <div class="card" id="miou-card" style="display: none"><b id="miou">-</b><small>mIoU so far (--eval)</small></div>
  </div>
  <h2>Sources</h2><table id="sources"></table>
  <h2>Classes in view</h2><table id="classes"></table>
  <div id="instances-box" style="display: none"><h2>Instances</h2><table id="instances"></table></div>
  <h2>Stages (median ms)</h2><table id="stages"></table>
 </aside>
</main>
<script>
const $ = id => document.getElementById(id);
let watching = '';  // '' = whichever source has the newest frame
function watch(id) {
  watching = watching === id ? '' : id;
  $('stream').src = '/stream.mjpg' + (watching ? '?source=' + encodeURIComponent(watching) : '');
}
const esc = t => String(t).replace(/[&<>"']/g, c => '&#' + c.charCodeAt(0) + ';');
async function refresh() {
  try {
    const s = await (await fetch('/stats.json', {cache: 'no-store'})).json();
    $('fps').textContent = s.fps.toFixed(1);
    $('frame').textContent = s.frame;
    $('lat50').textContent = Math.round(s.latency_ms.median);
    $('lat95').textContent = Math.round(s.latency_ms.p95);
    $('skipped').textContent = s.skipped;
    $('viewers').textContent = s.viewers;
    $('miou-card').style.display = s.miou == null ? 'none' : '';
    if (s.miou != null) $('miou').textContent = s.miou.toFixed(3);
    $('model').textContent = s.model;
    $('source').textContent = watching || s.source;
    if (watching && !s.sources.some(x => x.id === watching)) watch(watching);  // it ended: back to all
    $('sources').innerHTML = s.sources.map(x =>
      `<tr class="${x.id === watching ? 'on' : ''}" data-id="${esc(x.id)}"><td>${esc(x.id)}</td>` +
      `<td class="n">${x.fps.toFixed(1)} fps</td><td class="n">#${x.frame}</td></tr>`).join('');
    for (const row of $('sources').rows) row.onclick = () => watch(row.dataset.id);
    $('classes').innerHTML = s.classes.map(c =>
      `<tr><td><span class="swatch" style="background:${c.colour}"></span>${c.name}</td>` +
      `<td class="n">${(100 * c.share).toFixed(1)}%</td></tr>` +
      `<tr><td colspan="2"><div class="bar"><i style="width:${100 * c.share}%;background:${c.colour}"></i></div></td></tr>`
    ).join('');
    const found = s.instances || [];
    $('instances-box').style.display = s.instances == null ? 'none' : '';
    $('instances').innerHTML = found.map(i =>
      `<tr><td><span class="swatch" style="background:${esc(i.colour)}"></span>${esc(i.label)} #${i.id}</td>` +
      `<td class="n">${(100 * i.score).toFixed(0)}%</td></tr>`).join('');
    $('stages').innerHTML = Object.entries(s.stages).map(([n, v]) =>
      `<tr><td>${n}</td><td class="n">${v.toFixed(1)}</td></tr>`).join('');
  } catch (e) { /* the pipeline ended: keep the last numbers */ }
}
setInterval(refresh, 500); refresh();
</script></body></html>
"""


MAX_LISTED_INSTANCES = 30


def _instances(value: Any) -> list[dict[str, Any]] | None:
    """An instance model's detections as the view lists them (with the colour each is
    drawn in), or None for other models."""
    if not isinstance(value, list):
        return None
    listed = []
    for item in value[:MAX_LISTED_INSTANCES]:
        b, g, r = instance_colour(int(item["id"]))
        listed.append({"id": item["id"], "label": item["label"], "score": item["score"],
                       "colour": f"#{r:02x}{g:02x}{b:02x}"})
    return listed


class ViewState:
    """What the view shows, updated by the render stage, read by the viewer threads."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._seq = 0
        self._by_source: dict[str, tuple[int, bytes]] = {}  # source -> (seq, its newest JPEG)
        self.sources: dict[str, dict[str, Any]] = {}  # the sources on air: id -> fps, frame
        self.stats: dict[str, Any] = {"fps": 0.0, "frame": 0, "latency_ms": {"median": 0, "p95": 0}, "skipped": 0,
                                      "classes": [], "stages": {}, "model": "", "source": ""}
        self.viewers = 0
        self.closed = False

    def publish(self, image: np.ndarray, stats: dict[str, Any]) -> None:
        """A new overlay image and the numbers that go with it (``stats["source"]``: whose)."""
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        source = str(stats.get("source", ""))
        with self._cond:
            if ok:
                self._jpeg = buf.tobytes()
                self._seq += 1
                self._by_source[source] = (self._seq, self._jpeg)
            self.sources[source] = {"id": source, "fps": stats.get("fps", 0.0), "frame": stats.get("frame", 0)}
            self.stats = stats
            self._cond.notify_all()

    def end(self, source: str) -> None:
        """``source`` ended: it leaves the page (a viewer of it alone gets no more frames)."""
        with self._cond:
            self.sources.pop(source, None)
            self._by_source.pop(source, None)
            self._cond.notify_all()

    def numbers(self) -> dict[str, Any]:
        """What ``/stats.json`` serves."""
        with self._cond:
            return {**self.stats, "viewers": self.viewers, "sources": list(self.sources.values())}

    def next_frame(self, after: int, timeout_s: float = 1.0, source: str | None = None) -> tuple[int, bytes | None]:
        """The newest JPEG (of ``source``, or of any) once it is newer than ``after``, or
        None after the timeout."""
        def newest() -> tuple[int, bytes | None]:
            if source is None:
                return self._seq, self._jpeg
            return self._by_source.get(source, (0, None))

        with self._cond:
            self._cond.wait_for(lambda: newest()[0] > after or self.closed, timeout_s)
            seq, jpeg = newest()
            return (seq, jpeg) if seq > after else (after, None)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


def _handler(state: ViewState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:  # route to logging, quietly
            logger.debug("view: " + fmt, *args)

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            request_received(self)  # a stream may go on for hours
            if self.path == "/":
                self._send(PAGE.encode(), "text/html; charset=utf-8")
            elif self.path.startswith("/stats.json"):
                self._send(json.dumps(state.numbers()).encode(), "application/json")
            elif self.path.startswith("/stream.mjpg"):
                query = parse_qs(urlsplit(self.path).query)
                self._stream(query["source"][0] if query.get("source") else None)
            else:
                self.send_error(HTTPStatus.NOT_FOUND, "try / , /stream.mjpg or /stats.json")

        def _stream(self, source: str | None) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            state.viewers += 1
            seq = 0
            try:
                while not state.closed:
                    seq, jpeg = state.next_frame(seq, source=source)
                    if jpeg is None:
                        continue
                    self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                                     .encode() + jpeg + b"\r\n")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the tab was closed
            finally:
                state.viewers -= 1

    return Handler


class ViewServer:
    """The HTTP server of the live view, in a background thread.

    Args:
        address: ``HOST:PORT`` (or ``:PORT``); 127.0.0.1 unless the user asks otherwise.
    """

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.state = ViewState()
        try:
            self._server = BackgroundHttpServer(host or "127.0.0.1", int(port), _handler(self.state), "view")
        except (OSError, ValueError) as exc:
            raise OutputError(f"cannot serve the view on {address!r}: {exc}; pass --view HOST:PORT with a free port") \
                from None
        logger.info("live view on http://%s:%d/", self._server.host, self._server.port)

    def close(self) -> None:
        """Stop serving; open streams end."""
        self.state.close()
        self._server.close()


class LiveView(BaseSink):
    """``view:HOST:PORT``: serves the newest overlay and its numbers (the server starts with
    the render stage, so a browser may connect before the first frame)."""

    def __init__(self, address: str, context: SinkContext) -> None:
        self.server = ViewServer(address)
        self.context = context
        self._colours = ["#%02x%02x%02x" % (r, g, b) for b, g, r in context.palette]
        self.frames = 0

    def write(self, result: SinkResult) -> None:
        if result.image is None:
            return
        self.server.state.publish(result.image, self._numbers(result))
        self.frames += 1

    def _numbers(self, result: SinkResult) -> dict[str, Any]:
        names = self.context.class_names
        counts = result.counts if result.counts is not None else np.zeros(1, np.int64)
        pixels = result.mask.size if result.mask is not None else 1
        classes = [{"name": names[i], "colour": self._colours[i], "share": round(float(counts[i]) / pixels, 4)}
                   for i in np.argsort(counts)[::-1] if counts[i] and i < len(names)][:12]
        return {
            "fps": round(result.fps, 2),
            "frame": result.header.index,
            "source": result.header.source,
            "model": self.context.model,
            **self.context.live_figures(),
            "classes": classes,
            "classification": result.header.meta.get("classification"),
            "instances": _instances(result.header.meta.get("instances")),
        }

    def end_source(self, final: SinkResult) -> None:
        self.server.state.end(final.header.source)

    def close(self) -> None:
        self.server.close()

    def figures(self) -> dict[str, Any]:
        return {"frames": self.frames}
