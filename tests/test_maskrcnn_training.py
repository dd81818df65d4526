"""A Mask R-CNN trained here on real frames learns: the short check.

The data: every 40th frame of the shared dash-cam clip (6 frames, 10 cars), labelled by the
pretrained ESPNet (each connected region of its ``car`` class is an instance,
``segstream.engines.training.pseudo_labels``). ``maskrcnn-r18-fpn`` trains from scratch on
them for three short epochs at 192x352 without augmentation, and its training loss (the
five Mask R-CNN losses together) must fall by 30 % or more: measured here 3.83, 1.81, 1.70
over the three epochs, in 29 s. With a learning rate of 1e-9 (no learning) it stays at 7.00,
7.05, 7.00; so would a loss that does not reach the weights.

The long run (held-out mask AP50 0.50 after three epochs on 80 frames; untrained 0.0) is a
benchmark: ``tools/bench_maskrcnn_training.py``, figures in BENCHMARKS.md. It took about 4
minutes of the suite when it was a test. One torch thread: beside the other test worker
two threads oversubscribe the cores and crawl.
"""

from __future__ import annotations

import pytest
import torch
from conftest import CLIP

from segstream.engines.training.instances import InstanceTrainer
from segstream.engines.training.pseudo_labels import build_video_dataset
from segstream.engines.training.trainer import TrainConfig

pytestmark = [pytest.mark.integration]

HEIGHT, WIDTH = 192, 352
LOSS_FALLS_TO = 0.7  # of the first epoch's: measured 0.44


def test_a_mask_rcnn_trained_on_real_frames_learns(tmp_path, espnet_onnx):
    counts = build_video_dataset(CLIP, espnet_onnx, tmp_path / "clip", every=40)
    assert counts["train_images"] >= 5 and counts["train_instances"] >= 8
    data = f"coco:{tmp_path / 'clip'}:train"
    config = TrainConfig("maskrcnn-r18-fpn", data, val=data, epochs=3, repeat=2, crop=(HEIGHT, WIDTH),
                         batch_size=2, lr=0.02, optimizer="sgd", scale=(1.0, 1.0), jitter=0.0,
                         output=str(tmp_path / "ckpt"), threads=1)
    threads = torch.get_num_threads()
    try:
        history = InstanceTrainer(config).run()
    finally:  # the trainer sets torch's threads for the whole process: the worker's next tests need its own
        torch.set_num_threads(threads)
    losses = [result.loss for result in history]
    assert len(losses) == 3 and all(loss == loss for loss in losses)  # no NaN
    assert losses[-1] < LOSS_FALLS_TO * losses[0], losses
    last = torch.load(tmp_path / "ckpt" / "last.pt", map_location="cpu", weights_only=True)
    assert last["model"] == "maskrcnn-r18-fpn" and set(last["metrics"]) >= {"mask_ap", "mask_ap50", "box_ap"}
