"""``segstream consume``: what a downstream program sees on the results socket.

Prints one line per mask (source, frame index, shape, latency) and can save the masks
as PNG. Built on ``segstream.pipeline.client.MaskSubscriber``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import TextIO

from segstream.pipeline.brokers import is_broker_uri
from segstream.pipeline.client import MaskSubscriber
from segstream.pipeline.sinks.records import frame_file, inside, write_png
from segstream.pipeline.wire.keys import CurveClient

logger = logging.getLogger(__name__)
TOP_CLASSES = 5  # classes printed per mask, largest share first


@dataclass(frozen=True)
class ConsumeOptions:
    """Options of ``segstream consume``.

    Attributes:
        endpoint: the pipeline's publish endpoint.
        count: exit after this many masks (0 = until end of stream).
        save: folder to write ``<source>/<frame>.png`` into, or None.
        timeout_s: exit with an error after this long without a message (0 = wait forever).
        lossless: read a ``--publish-lossless`` channel instead of the PUB socket.
        curve: this consumer's keys for an endpoint published with ``--publish-keys``.
    """

    endpoint: str
    count: int = 0
    save: str | None = None
    timeout_s: float = 0.0
    lossless: bool = False
    curve: CurveClient | None = None


def consume(options: ConsumeOptions, out: TextIO = sys.stdout) -> int:
    """Receive and print masks; returns the exit code (0 ok, 1 timeout). Ctrl-C raises
    KeyboardInterrupt (the CLI exits 130) after closing the socket."""
    received = 0
    subscriber = MaskSubscriber(options.endpoint, timeout_s=options.timeout_s or None, lossless=options.lossless,
                                curve=options.curve)
    channel = "lossless channel" if options.lossless else "broker" if is_broker_uri(options.endpoint) else "PUB socket"
    limit = f"; giving up after {options.timeout_s:g} s of silence" if options.timeout_s else "; Ctrl-C to stop"
    print(f"segstream consume: waiting for masks on {options.endpoint} ({channel}){limit}", file=sys.stderr,
          flush=True)
    try:
        for result in subscriber:
            shape = f" shape={result.mask.shape[1]}x{result.mask.shape[0]}" if result.mask is not None else ""
            labels = " labels=" + ",".join(f"{c['label']}:{float(c['score']):.2f}" for c in result.classification) \
                if result.classification else ""
            instances = f" instances={len(result.instances)}" if result.instances is not None else ""
            top = sorted(result.named_classes().items(), key=lambda item: -item[1])[:TOP_CLASSES]
            classes = " classes=" + ",".join(f"{name}:{share:.2f}" for name, share in top) if top else ""
            out.write(f"source={result.source} frame={result.index} name={result.name}{shape}{classes}{labels}"
                      f"{instances} "
                      f"latency={result.latency_ms:.1f}ms" + (f" gap={result.gap}" if result.gap else "") + "\n")
            out.flush()
            if options.save and result.mask is not None:
                write_png(frame_file(inside(options.save, result.source), result.name, ".png"), result.mask)
            received += 1
            if options.count and received >= options.count:
                break
        for source in sorted(subscriber.ended):
            out.write(f"source={source} end-of-stream\n")
        if subscriber.skipped:
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(subscriber.skipped.items()))
            out.write(f"skipped {sum(subscriber.skipped.values())} messages ({reasons})\n")
        if subscriber.timed_out:
            out.write(subscriber.timeout_reason() + "\n")
            return 1
        return 0
    finally:
        subscriber.close()
