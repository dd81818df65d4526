"""The ``segstream`` command line: one module per group of subcommands, thin over the packages.

::

    segstream run  [--config FILE] [--source SRC]... [--model NAME|FILE] [--sink URI]... (segstream run --help)
    segstream demo [--record DIR]
    segstream consume ENDPOINT [--count N] [--save DIR] [--server-key FILE --client-key FILE]
    segstream keys DIR [--client NAME]
    segstream sources list|add URI|remove ID --api URL [--id ID] [--option KEY=VALUE]...
    segstream export MODEL -o FILE.onnx
    segstream build MODEL.onnx [--fp16|--int8 --calib DIR] [--shapes MIN:OPT:MAX] [--workspace GB] [-o FILE]
    segstream train MODEL --data DATASET [--epochs N] [--crop HxW] [--resume CKPT]
    segstream models
    segstream eval PRED_DIR GT_SOURCE | gt-from-color COLOR.png... | report RUN_DIR
    segstream doctor
    segstream --version
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from segstream.cli import doctor, evaluation, models, run, sources

logger = logging.getLogger(__name__)


def _setup_logging(verbose: bool) -> None:
    level = "DEBUG" if verbose else os.environ.get("SEGSTREAM_LOG_LEVEL", "INFO").upper()
    os.environ["SEGSTREAM_LOG_LEVEL"] = level
    logging.basicConfig(level=level, format="%(asctime)s supervisor %(levelname)s %(message)s", datefmt="%H:%M:%S")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("segstream")
    except PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``segstream``."""
    parser = argparse.ArgumentParser(prog="segstream", description="Streaming video segmentation over ZeroMQ.")
    parser.add_argument("--version", action="version", version=f"segstream {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    run.add_parsers(sub)
    sources.add_parsers(sub)
    models.add_parsers(sub)
    evaluation.add_parsers(sub)
    doctor.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``segstream`` command: every error segstream raises on purpose
    (``SegstreamError``) is printed as one line, exit code 2."""
    from segstream.errors import SegstreamError

    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except SegstreamError as exc:
        print(f"segstream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segstream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
