#!/usr/bin/env python3
"""Benchmark: how far `segstream train` fits the six shared frames, and how fast.

DDRNet-23-slim from scratch on the three Cityscapes and three KITTI frames of
../shared/data, labelled by the pretrained ESPNet (the tree ``tests/test_training.py``
builds), 900 steps at 128x256, batch 2. Prints pixel accuracy and mIoU before and after
each epoch, and the time it took, as a Markdown table (paste it into BENCHMARKS.md). The
tests prove that training learns in well under 90 s; this records how far it gets.

    SEGSTREAM_DATA=../shared/data python tools/bench_training.py [--epochs 10] [--repeat 30]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the labelled tree of the training tests

from test_training import espnet_labelled_tree  # noqa: E402

from segstream.engines.training.trainer import TrainConfig, Trainer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=30, help="passes over the six frames per epoch")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = f"cityscapes:{espnet_labelled_tree(Path(tmp) / 'tree')}:train"
        config = TrainConfig(model="ddrnet23-slim", data=data, epochs=args.epochs, repeat=args.repeat, crop=(128, 256),
                             batch_size=2, lr=5e-3, scale=(1.0, 1.0), jitter=0.0, output=str(Path(tmp) / "run"),
                             threads=args.threads)
        trainer = Trainer(config)
        before = trainer.validate()
        start = time.perf_counter()
        history = trainer.run()
        elapsed = time.perf_counter() - start
    steps = args.epochs * args.repeat * 3  # six frames, batch 2
    print(f"machine: {platform.processor() or platform.machine()}, {sys.version.split()[0]}")
    print(f"command: python tools/bench_training.py --epochs {args.epochs} --repeat {args.repeat}")
    print(f"{steps} steps in {elapsed:.0f} s\n")
    print("| epoch | loss | pixel accuracy | mIoU |")
    print("|---:|---:|---:|---:|")
    print(f"| 0 (before) | | {before['pixel_accuracy']:.3f} | {before['miou']:.3f} |")
    for result in history:
        print(f"| {result.epoch} | {result.loss:.4f} | {result.metrics['pixel_accuracy']:.3f} | "
              f"{result.metrics['miou']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
