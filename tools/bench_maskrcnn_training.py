"""Mask R-CNN (maskrcnn-r18-fpn) trained from scratch on the dash-cam clip, pseudo-labelled by
the pretrained ESPNet (segstream.engines.training.pseudo_labels; every second frame, the last
10 of each 40 held out, the 4 before them left out): held-out mask and box AP after each
epoch, as a table for BENCHMARKS.md.

    SEGSTREAM_DATA=../shared/data python tools/bench_maskrcnn_training.py --epochs 8 --crop 256x448
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--crop", default="256x448", help="HxW training size")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--output", default=None, help="checkpoint folder (default: a temporary one)")
    args = parser.parse_args()

    from segstream.engines.export import cached_onnx
    from segstream.engines.training.instances import InstanceTrainer
    from segstream.engines.training.pseudo_labels import build_video_dataset
    from segstream.engines.training.trainer import TrainConfig

    data = Path(os.environ.get("SEGSTREAM_DATA", "../shared/data"))
    work = Path(tempfile.mkdtemp(prefix="segstream-maskrcnn-"))
    started = time.monotonic()
    counts = build_video_dataset(data / "solidWhiteRight.mp4", cached_onnx("espnet-cityscapes"), work / "clip")
    print(f"dataset: {counts} in {time.monotonic() - started:.0f} s")
    height, width = (int(v) for v in args.crop.split("x"))
    config = TrainConfig(model="maskrcnn-r18-fpn", data=f"coco:{work / 'clip'}:train", val=f"coco:{work / 'clip'}:val",
                         epochs=args.epochs, crop=(height, width), batch_size=2, lr=args.lr, jitter=0.1,
                         optimizer="sgd", output=args.output or str(work / "checkpoints"), threads=os.cpu_count() or 1)
    trainer = InstanceTrainer(config)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"maskrcnn-r18-fpn at {width}x{height}, batch 2, SGD lr {args.lr}")
    print("| epoch | steps | minutes | train loss | mask AP50 | mask AP | box AP50 | box AP |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    started = time.monotonic()

    def row(result) -> None:  # noqa: ANN001 - an EpochResult
        m = result.metrics
        print(f"| {result.epoch} | {result.epoch * trainer.steps_per_epoch} | {(time.monotonic() - started) / 60:.1f} "
              f"| {result.loss:.3f} | {m['mask_ap50']:.3f} | {m['mask_ap']:.3f} | {m['box_ap50']:.3f} "
              f"| {m['box_ap']:.3f} |", flush=True)

    trainer.run(on_epoch=row)
    print(f"checkpoints: {config.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
