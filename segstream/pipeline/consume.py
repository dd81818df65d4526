"""``segstream consume``: what a downstream program sees on the results socket.

Prints one line per mask (source, frame index, shape, latency) and can save the masks
as PNG. It uses only the public wire format (see README, "Wire format").
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import zmq

from segstream.pipeline.messages import Kind, MessageError, decode, inline_array
from segstream.pipeline.records import write_png
from segstream.pipeline.transport import Role, make_socket

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumeOptions:
    """Options of ``segstream consume``.

    Attributes:
        endpoint: the pipeline's publish endpoint.
        count: exit after this many masks (0 = until end of stream).
        save: folder to write ``<source>/<frame>.png`` into, or None.
        timeout_s: exit with an error after this long without a message (0 = wait forever).
    """

    endpoint: str
    count: int = 0
    save: str | None = None
    timeout_s: float = 0.0


def consume(options: ConsumeOptions, out: TextIO = sys.stdout) -> int:
    """Receive and print masks; returns the exit code (0 ok, 1 timeout)."""
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    previous = signal.signal(signal.SIGINT, on_signal)
    context = zmq.Context()
    sub = make_socket(context, Role.RESULTS_SUB, connect=options.endpoint)
    received = 0
    seen: set[str] = set()
    ended: set[str] = set()
    last_index: dict[str, int] = {}
    last_message = time.monotonic()
    code = 0
    try:
        while not stop:
            if not sub.poll(100):
                if options.timeout_s and time.monotonic() - last_message > options.timeout_s:
                    out.write(f"no message for {options.timeout_s:.0f} s on {options.endpoint}\n")
                    code = 1
                    break
                continue
            last_message = time.monotonic()
            try:
                message = decode(sub.recv_multipart())
            except MessageError as exc:
                logger.warning("skipped a malformed message: %s", exc)
                continue
            header = message.header
            if header.kind is Kind.EOS:
                ended.add(header.source)
                out.write(f"source={header.source} end-of-stream\n")
                if seen and seen <= ended:
                    break
                continue
            if header.kind is not Kind.RESULT:
                continue
            part = header.part("mask")
            if part is None or part.inline is None:
                logger.warning("result for frame %d carries no inline mask", header.index)
                continue
            mask = inline_array(part, message.payload)
            seen.add(header.source)
            gap = header.index - last_index.get(header.source, header.index - 1) - 1
            last_index[header.source] = header.index
            latency_ms = (time.time_ns() - header.wall_ns) / 1e6
            out.write(f"source={header.source} frame={header.index} name={header.name} "
                      f"shape={mask.shape[1]}x{mask.shape[0]} latency={latency_ms:.1f}ms"
                      + (f" gap={gap}" if gap > 0 else "") + "\n")
            out.flush()
            if options.save:
                write_png(Path(options.save) / header.source / f"{header.name}.png", mask)
            received += 1
            if options.count and received >= options.count:
                break
    finally:
        sub.close(linger=0)
        context.term()
        signal.signal(signal.SIGINT, previous)
    return code
