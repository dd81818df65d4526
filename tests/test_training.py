"""`segstream train` for real, on tiny datasets built from the frames in ../shared/data.

Segmentation: the three Cityscapes and three KITTI frames in a Cityscapes layout, labelled
by the pretrained ESPNet (run at each frame's own aspect ratio). Classification: the same
frames in label folders (Cityscapes frames "urban", KITTI frames "highway").
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from conftest import CITYSCAPES_FRAMES, KITTI_FRAMES, run_segstream
from dataset_trees import espnet_train_ids

from segstream.datasets.cityscapes import LABEL_TO_TRAIN_ID
from segstream.engines.export import export_onnx
from segstream.engines.preprocess import Preprocessor
from segstream.engines.training.trainer import TrainConfig, Trainer
from segstream.errors import ModelError

pytestmark = pytest.mark.slow  # started first, so the two workers finish together


def espnet_labelled_tree(root: Path) -> Path:
    """``leftImg8bit/train`` and ``gtFine/train`` label ids from ESPNet's predictions."""
    to_label_id = np.zeros(256, np.uint8)  # train id -> label id (ignore -> 0, "unlabeled")
    for label, train in LABEL_TO_TRAIN_ID.items():
        to_label_id[train] = label
    for k, src in enumerate([*CITYSCAPES_FRAMES, *KITTI_FRAMES]):
        city = "frankfurt" if "frankfurt" in src.name else "karlsruhe"
        stem = f"{city}_000000_{k:06d}"
        images, gts = root / "leftImg8bit" / "train" / city, root / "gtFine" / "train" / city
        images.mkdir(parents=True, exist_ok=True)
        gts.mkdir(parents=True, exist_ok=True)
        (images / f"{stem}_leftImg8bit.png").symlink_to(src)
        cv2.imwrite(str(gts / f"{stem}_gtFine_labelIds.png"), to_label_id[espnet_train_ids(src)])
    return root


def scene_folders(root: Path, masks: bool = False) -> Path:
    """Label folders: Cityscapes frames "urban", KITTI frames "highway"; with ``masks``,
    ESPNet's train ids beside each image (``NAME_trainIds.png``)."""
    for label, frames in (("urban", CITYSCAPES_FRAMES), ("highway", KITTI_FRAMES)):
        (root / label).mkdir(parents=True)
        for k, src in enumerate(frames):
            shutil.copyfile(src, root / label / f"{k}.png")
            if masks:
                cv2.imwrite(str(root / label / f"{k}_trainIds.png"), espnet_train_ids(src))
    return root


def test_segmentation_training_learns(tmp_path):
    """DDRNet-23-slim from scratch learns the six frames: 66 steps at 64x128 on one thread
    lower the epoch loss and lift pixel accuracy by 20 points (0.16 -> 0.50 here). How far
    it gets with 900 steps at 128x256 (>= 90 % pixel accuracy) is tools/bench_training.py's
    figure, in BENCHMARKS.md. One thread: two threads beside another busy process thrash
    (3x slower on the loaded 2-core machine)."""
    data = f"cityscapes:{espnet_labelled_tree(tmp_path / 'tree')}:train"
    out = tmp_path / "run"
    config = TrainConfig(model="ddrnet23-slim", data=data, epochs=2, repeat=11, crop=(64, 128), batch_size=2,
                         lr=5e-3, scale=(1.0, 1.0), jitter=0.0, output=str(out), threads=1)
    trainer = Trainer(config)
    before = trainer.validate()
    history = trainer.run()
    assert len(history) == 2
    assert history[-1].loss < 0.85 * history[0].loss  # epoch mean loss goes down (0.75x here)
    after = history[-1].metrics
    print(f"pixel accuracy {before['pixel_accuracy']:.3f} -> {after['pixel_accuracy']:.3f}, "
          f"mIoU {before['miou']:.3f} -> {after['miou']:.3f}")
    assert after["pixel_accuracy"] >= before["pixel_accuracy"] + 0.2 and after["miou"] > before["miou"]
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()


def test_a_training_checkpoint_exports_runs_and_resumes(tmp_path):
    """A checkpoint (one short epoch is enough) feeds export, ONNX Runtime runs the trained
    model, and ``--resume`` continues where the checkpoint stopped."""
    data = f"cityscapes:{espnet_labelled_tree(tmp_path / 'tree')}:train"
    out = tmp_path / "run"
    config = TrainConfig(model="ddrnet23-slim", data=data, epochs=1, repeat=1, crop=(64, 128), batch_size=2,
                         lr=5e-3, scale=(1.0, 1.0), jitter=0.0, output=str(out), threads=1)
    trainer = Trainer(config)
    assert len(trainer.run()) == 1 and (out / "best.pt").is_file()

    onnx_path = export_onnx("ddrnet23-slim", tmp_path / "trained.onnx", weights=out / "best.pt", height=128,
                            width=256)
    meta = trainer.spec.metadata
    frame = cv2.imread(str(CITYSCAPES_FRAMES[0]))
    tensor = Preprocessor(type(meta)(**{**meta.__dict__, "input_height": 128, "input_width": 256}))(frame)
    labels = ort.InferenceSession(str(onnx_path)).run(None, {"image": tensor})[0]
    assert labels.shape == (1, 128, 256) and labels.max() < 19

    # --resume continues where the checkpoint stopped (one more epoch, not two).
    result = run_segstream("train", "ddrnet23-slim", "--data", data, "--epochs", "2", "--crop", "64x128",
                           "--batch-size", "6", "--threads", "1", "--resume", str(out / "last.pt"), "-o", str(out),
                           timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("epoch")] == ["epoch 2"]
    with pytest.raises(ModelError, match="checkpoint of 'ddrnet23-slim'"):
        export_onnx("unet", tmp_path / "wrong.onnx", weights=out / "best.pt")


def test_classifier_training_on_label_folders(tmp_path):
    root = scene_folders(tmp_path / "scenes")
    config = TrainConfig(model="resnet18-classifier", data=str(root), epochs=12, crop=(64, 128), batch_size=6,
                         lr=2e-3, scale=(0.9, 1.1), jitter=0.1, output=str(tmp_path / "run"), threads=1)
    history = Trainer(config).run()
    assert history[-1].loss < history[0].loss
    assert max(r.metrics["accuracy"] for r in history) >= 0.9
    (root / "parking").mkdir()
    with pytest.raises(ModelError, match="not a label of this model"):
        Trainer(config)


def test_joint_training_learns_both_heads(tmp_path):
    """The joint model trains its mask and its scene label from one folder layout, and
    validation reports both the segmentation and the classification figures."""
    root = scene_folders(tmp_path / "scenes", masks=True)
    config = TrainConfig(model="joint-resnet18", data=str(root), epochs=4, repeat=3, crop=(64, 128), batch_size=3,
                         lr=2e-3, scale=(1.0, 1.0), jitter=0.0, output=str(tmp_path / "run"), threads=1)
    trainer = Trainer(config)
    before = trainer.validate()
    history = trainer.run()
    after = history[-1].metrics
    print(f"joint: loss {history[0].loss:.3f} -> {history[-1].loss:.3f}; {before} -> {after}")
    assert history[-1].loss < 0.75 * history[0].loss  # 0.44x here
    assert after["accuracy"] >= 0.9
    assert after["pixel_accuracy"] > before["pixel_accuracy"] + 0.2
