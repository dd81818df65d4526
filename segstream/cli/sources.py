"""``segstream sources list|add|remove --api URL``: the client of a running pipeline's
control API (``segstream run --api PORT``).

::

    segstream sources list   --api http://127.0.0.1:8081
    segstream sources add    rtsp://cam/stream --id gate-1 --option max_frames=100 --api http://127.0.0.1:8081
    segstream sources remove gate-1 --api http://127.0.0.1:8081

The token of a pipeline started with ``--api-token`` comes from ``--token`` or
``SEGSTREAM_API_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from segstream.errors import ConfigError, SegstreamError

logger = logging.getLogger(__name__)

TIMEOUT_S = 15.0


class ApiCallFailed(SegstreamError):
    """The control API answered with an error, or could not be reached."""


def api_base(text: str) -> str:
    """The control API's base URL from ``--api`` as ``run --api`` takes it (``PORT`` or
    ``HOST:PORT``, host 127.0.0.1 by default) or as a URL (``http://HOST:PORT``).

    Raises:
        ApiCallFailed: none of these forms.
    """
    if "://" in text:
        return text
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ApiCallFailed(f"--api takes PORT, HOST:PORT or http://HOST:PORT (as `segstream run --api` prints "
                            f"it), found {text!r}")
    return f"http://{host or '127.0.0.1'}:{port}"


def api_call(base: str, method: str, path: str, body: Any = None, token: str = "") -> tuple[int, Any]:
    """One request to the control API at ``base``; returns the status and the JSON answer.

    Raises:
        ApiCallFailed: the API could not be reached, or did not answer JSON.
    """
    base = api_base(base)
    url = base.rstrip("/") + ("" if base.rstrip("/").endswith("/api") else "/api") + path
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiCallFailed(f"cannot reach the control API at {url}: {reason}; is a pipeline running with --api?") from None
    try:
        return status, json.loads(raw)
    except ValueError:
        raise ApiCallFailed(f"{url} answered {status} with something that is not JSON: {raw[:200]!r}") from None


def _options(pairs: list[str], text: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if text:
        try:
            options = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--options takes a JSON object, e.g. '{{\"max_frames\": 100}}': {exc}") from None
        if not isinstance(options, dict):
            raise ConfigError(f"--options takes a JSON object, found {type(options).__name__}")
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option takes KEY=VALUE (e.g. max_frames=100 or rate=max), found {pair!r}")
        try:
            options[key] = json.loads(value)  # numbers and booleans as such
        except ValueError:
            options[key] = value
    return options


def _table(sources: list[dict[str, Any]]) -> str:
    lines = [f"{'id':<24} {'state':<13} {'in':>7} {'published':>9} {'skipped':>7} {'fps':>6} {'p50 ms':>7}  uri"]
    for s in sources:
        lines.append(f"{s['id'][:24]:<24} {s['state']:<13} {s['frames_in']:>7} {s['frames_published']:>9} "
                     f"{s['frames_skipped']:>7} {s['fps']:>6.1f} {s['latency_ms']['p50']:>7.1f}  {s['uri']}"
                     + (f"\n{'':<24} error: {s['error']}" if s.get("error") else ""))
    return "\n".join(lines)


def cmd_sources(args: argparse.Namespace) -> int:
    """``segstream sources``: exit 0 on success, 1 when the API refused the request."""
    token = args.token or os.environ.get("SEGSTREAM_API_TOKEN", "")
    if args.action == "list":
        status, answer = api_call(args.api, "GET", "/sources", token=token)
    elif args.action == "add":
        body: dict[str, Any] = {"uri": args.target}
        if args.id:
            body["id"] = args.id
        options = _options(args.option or [], args.options)
        if options:
            body["options"] = options
        status, answer = api_call(args.api, "POST", "/sources", body, token)
    else:
        status, answer = api_call(args.api, "DELETE", f"/sources/{urllib.parse.quote(args.target, safe='')}",
                                  token=token)
    if status >= 400:
        message = answer.get("error", answer) if isinstance(answer, dict) else answer
        print(f"segstream sources {args.action}: {status}: {message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=1))
    elif args.action == "list":
        print(_table(answer))
    else:
        print(_table([answer]))
    return 0


def add_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``sources``."""
    p = sub.add_parser("sources", help="list, add or remove the sources of a pipeline running with --api")
    p.add_argument("action", choices=("list", "add", "remove"))
    p.add_argument("target", nargs="?", help="add: the source URI; remove: the source id")
    p.add_argument("--api", required=True, metavar="[HOST:]PORT|URL", help="the pipeline's control API as "
                   "`segstream run --api` took it (8081, 127.0.0.1:8081) or its URL (http://127.0.0.1:8081)")
    p.add_argument("--id", help="add: the source's id (default: from its name)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="add: a source option (max_frames, "
                   "rate, loop); repeat for several")
    p.add_argument("--options", metavar="JSON", help="add: the options as a JSON object (live: {...} too)")
    p.add_argument("--token", help="bearer token (default: $SEGSTREAM_API_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=_checked)


def _checked(args: argparse.Namespace) -> int:
    if args.action in ("add", "remove") and not args.target:
        what = "the source URI" if args.action == "add" else "the source id"
        raise ConfigError(f"segstream sources {args.action} needs {what}")
    return cmd_sources(args)
