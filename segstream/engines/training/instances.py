"""Training instance models (Mask R-CNN): COCO-layout or Cityscapes instance data, the five
Mask R-CNN losses, a linear warm-up, the full rate, then a tenth of it for the last fifth of
the steps, gradients clipped, and COCO mask and box AP on the validation images after each
epoch.

Images are resized to the model's input size (as the pipeline resizes frames), flipped at
random, their brightness and contrast jittered. Annotations whose class the model does not
name, and crowd regions, are left out of training.
"""

from __future__ import annotations

import dataclasses
import logging
import random

import cv2
import numpy as np

from segstream.datasets.instances import AnnotatedImage, mask_extent, open_instances
from segstream.engines.instance_results import detection_instances
from segstream.engines.preprocess import Preprocessor
from segstream.engines.training.trainer import Trainer
from segstream.errors import ModelError
from segstream.evaluation.instances import Instance, evaluate_instances

logger = logging.getLogger(__name__)

WARMUP_STEPS = 100
TRAINING_ROIS = 64  # RoIs sampled per image (torchvision: 512): a quarter foreground, the mask head's share


class InstanceLoader:
    """Reads annotated images as model inputs and Mask R-CNN targets.

    Args:
        images: the annotated images.
        trainer: the trainer (model metadata, input size, augmentation settings).
        augment: flip and colour jitter (training).
    """

    def __init__(self, images: list[AnnotatedImage], trainer: "InstanceTrainer", augment: bool) -> None:
        self.images = images
        self.height, self.width = trainer.crop
        self.augment = augment
        self.jitter = trainer.config.jitter if augment else 0.0
        meta = trainer.spec.metadata
        self._pre = Preprocessor(dataclasses.replace(meta, input_height=self.height, input_width=self.width))
        self._classes = {name: k + 1 for k, name in enumerate(meta.class_names) if name != "N/A"}
        self._rng = random.Random(trainer.config.seed)
        self._unknown: set[str] = set()

    def batches(self, batch_size: int, shuffle: bool) -> list[list[AnnotatedImage]]:
        order = list(self.images)
        if shuffle:
            self._rng.shuffle(order)
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def image(self, item: AnnotatedImage) -> np.ndarray:
        """The BGR image at the model's input size (jittered when augmenting)."""
        image = cv2.imread(str(item.path), cv2.IMREAD_COLOR)
        if image is None:
            raise ModelError(f"cannot read training image {item.path}")
        image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        if self.jitter:
            j, rng = self.jitter, self._rng
            scaled = image.astype(np.float32) * rng.uniform(1 - j, 1 + j)
            mean = scaled.mean()
            image = np.clip((scaled - mean) * rng.uniform(1 - j, 1 + j) + mean, 0, 255).astype(np.uint8)
        return image

    def load(self, item: AnnotatedImage):
        """``(tensor (3, H, W), Targets)`` of one image, in model input pixels."""
        import torch

        from segstream.engines.models.maskrcnn.losses import Targets

        image = self.image(item)
        masks, classes = [], []
        for annotation in item.annotations():
            if annotation.crowd:
                continue
            if annotation.name not in self._classes:
                if annotation.name not in self._unknown:
                    self._unknown.add(annotation.name)
                    logger.warning("%s: class %r is not one of the model's; its annotations are left out",
                                   item.path, annotation.name)
                continue
            mask = cv2.resize(annotation.mask.astype(np.uint8), (self.width, self.height),
                              interpolation=cv2.INTER_NEAREST)
            if mask.any():
                masks.append(mask)
                classes.append(self._classes[annotation.name])
        if self.augment and self._rng.random() < 0.5:
            image = np.ascontiguousarray(image[:, ::-1])
            masks = [np.ascontiguousarray(m[:, ::-1]) for m in masks]
        boxes = [mask_extent(mask) for mask in masks]  # each is non-empty
        tensor = torch.from_numpy(self._pre(image)[0].copy())
        stacked = np.stack(masks).astype(np.float32) if masks else np.zeros((0, self.height, self.width), np.float32)
        return tensor, Targets(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                               torch.tensor(classes, dtype=torch.int64), torch.from_numpy(stacked))


class InstanceTrainer(Trainer):
    """Trains an instance model of the zoo (``task == "instances"``)."""

    primary_metrics = ("mask_ap",)
    max_grad_norm = 10.0

    def _open_data(self) -> int:
        config = self.config
        if self.spec.task != "instances":
            raise ModelError(f"{config.model} is not an instance model")
        train = open_instances(config.data)
        val = open_instances(config.val) if config.val else train
        self.train_loader = InstanceLoader(train, self, augment=True)  # type: ignore[assignment]
        self.val_loader = InstanceLoader(val, self, augment=False)  # type: ignore[assignment]
        logger.info("%s: %d training images, %d validation images", config.data, len(train), len(val))
        return len(self.train_loader.batches(config.batch_size, False))

    def _learning_rate(self, step: int) -> float:
        """Mask R-CNN's schedule: a linear warm-up (detection training diverges without
        one), the full rate, and a tenth of it for the last fifth of the steps."""
        total = self.config.epochs * self.steps_per_epoch
        warmup = min(WARMUP_STEPS, max(1, total // 5))
        return self.config.lr * min(1.0, (step + 1) / warmup) * (0.1 if step >= 0.8 * total else 1.0)

    def _batch_loss(self, batch):  # noqa: ANN001, ANN202 - torch types, imported lazily
        from segstream.engines.models.maskrcnn.losses import SamplingConfig, maskrcnn_losses

        items = [self.train_loader.load(item) for item in batch]
        images = self.torch.stack([i[0] for i in items])
        losses = maskrcnn_losses(self.model, images, [i[1] for i in items], SamplingConfig(rois=TRAINING_ROIS))
        return sum(losses.values())

    def validate(self) -> dict[str, float]:
        """COCO box and mask AP of the validation images, at the model's input size."""
        torch = self.torch
        loader = self.val_loader
        meta = dataclasses.replace(self.spec.metadata, input_height=loader.height, input_width=loader.width)
        self.model.eval()
        truth: list[Instance] = []
        found: list[Instance] = []
        with torch.inference_mode():
            for key, item in enumerate(loader.images):
                tensor, target = loader.load(item)
                out = self.model(tensor[None])
                outputs = {o.name: out[o.name].numpy() for o in meta.outputs}
                for box, cls, mask in zip(target.boxes.tolist(), target.classes.tolist(), target.masks.numpy()):
                    truth.append(Instance(key, int(cls), tuple(box), mask > 0))
                found += detection_instances(outputs, meta, key, (loader.height, loader.width))
        metrics: dict[str, float] = {}
        for kind, prefix in (("segm", "mask"), ("bbox", "box")):
            result = evaluate_instances(truth, found, kind)
            metrics.update({f"{prefix}_ap": result["ap"], f"{prefix}_ap50": result["ap50"]})
        return metrics
