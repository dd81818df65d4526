"""The training loop: cross-entropy (ignore label excluded), AdamW with a poly schedule,
a progress line with loss and throughput, validation mIoU / accuracy after each epoch,
and checkpoints that ``segstream export --weights`` and ``--resume`` take."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from segstream.datasets.cityscapes import IGNORE_INDEX
from segstream.engines.models.zoo import ModelSpec, get_model_spec
from segstream.engines.training.data import Augment, Sample, SampleLoader, dataset_samples, folder_samples
from segstream.errors import ModelError
from segstream.evaluation.metrics import ConfusionAccumulator, scores

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """What ``segstream train`` does.

    Attributes:
        model: zoo model name.
        data: a dataset URI with ground truth (segmentation) or a folder per label
            (classifier, joint).
        val: data to validate on (default: the training data, without augmentation).
        epochs: epochs; one validation and checkpoint after each.
        repeat: passes over the data per epoch (more steps between validations on a
            tiny dataset).
        crop: (H, W) training crop (default: the model's input size).
        batch_size: images per step.
        lr: learning rate (poly decay to 0).
        optimizer: ``adamw``, or ``sgd`` (momentum 0.9; Mask R-CNN's recipe, with lr 0.02).
        scale: random scale range.
        jitter: colour jitter strength (0: off).
        resume: checkpoint to continue from (model, optimiser, epoch).
        weights: weights to start from (fine-tuning), e.g. the pretrained ones.
        output: folder for ``last.pt`` and ``best.pt``.
        threads: torch threads (0: default).
        seed: random seed.
    """

    model: str
    data: str
    val: str | None = None
    epochs: int = 10
    repeat: int = 1
    crop: tuple[int, int] | None = None
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adamw"
    scale: tuple[float, float] = (0.5, 2.0)
    jitter: float = 0.2
    resume: str | None = None
    weights: str | None = None
    output: str = "segstream-train"
    threads: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.repeat < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ModelError(f"epochs, repeat, batch size and lr must be positive, found {self.epochs}, "
                             f"{self.repeat}, {self.batch_size}, {self.lr}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ModelError(f"optimizer must be adamw or sgd, found {self.optimizer!r}")


@dataclass
class EpochResult:
    """Figures of one epoch."""

    epoch: int
    loss: float
    images_per_s: float
    metrics: dict[str, float] = field(default_factory=dict)


def _samples(spec: ModelSpec, data: str) -> list[Sample]:
    if spec.task == "segmentation":
        return dataset_samples(data)
    return folder_samples(Path(data), spec.metadata.label_names)


class Trainer:
    """Trains one zoo model; ``run()`` returns the per-epoch results."""

    primary_metrics = ("miou", "accuracy")  # the figure best.pt is chosen by, the first there is
    max_grad_norm: float | None = None  # gradients clipped to this norm (None: not clipped)

    def __init__(self, config: TrainConfig) -> None:
        import torch

        self.config = config
        self.torch = torch
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self.spec = get_model_spec(config.model)
        meta = self.spec.metadata
        crop = config.crop or (meta.input_height, meta.input_width)
        if crop[0] % self.spec.size_multiple or crop[1] % self.spec.size_multiple:
            raise ModelError(f"--crop {crop[0]}x{crop[1]}: {config.model} needs multiples of {self.spec.size_multiple}")
        self.crop = crop
        self.steps_per_epoch = config.repeat * self._open_data()
        from segstream.engines.export import load_torch_model

        # no weights known nor given: it trains from its random initialisation
        self.model, _ = load_torch_model(config.model, config.weights, random_weights=True)
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=0.9, weight_decay=1e-4)
        else:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=1e-4)
        self.start_epoch = 0
        self.best = -1.0
        if config.resume:
            self._resume(Path(config.resume))
        self.out = Path(config.output)

    def _open_data(self) -> int:
        """Open the training and validation data; the number of batches in one pass."""
        config, meta, crop = self.config, self.spec.metadata, self.crop
        train = _samples(self.spec, config.data)
        val = _samples(self.spec, config.val) if config.val else train
        self.train_loader = SampleLoader(train, meta, Augment(crop, config.scale, jitter=config.jitter), crop[0],
                                         self.spec.size_multiple, config.seed)
        # Validation: whole images at the crop's height, aspect kept, one at a time.
        self.val_loader = SampleLoader(val, meta, None, crop[0], self.spec.size_multiple)
        return len(self.train_loader.batches(config.batch_size, False))

    def _resume(self, path: Path) -> None:
        try:  # tensors and plain data only: a checkpoint never runs code on load
            state = self.torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises several kinds for a file it refuses
            raise ModelError(f"--resume {path} is not a segstream checkpoint that loads safely (tensors and plain "
                             f"data only): {str(exc).splitlines()[0]}") from None
        if not isinstance(state, dict) or state.get("model") != self.config.model:
            found = state.get("model") if isinstance(state, dict) else type(state).__name__
            raise ModelError(f"--resume {path} is a checkpoint of {found!r}, not {self.config.model!r}")
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch = int(state["epoch"])
        self.best = float(state.get("best", -1.0))
        logger.info("resumed %s at epoch %d", path, self.start_epoch)

    def _loss(self, images, masks, labels):
        F = self.torch.nn.functional
        seg, cls = self.spec.split_outputs(self.model(images))
        loss = images.new_zeros(())
        if seg is not None and masks is not None:
            loss = loss + F.cross_entropy(seg, masks, ignore_index=IGNORE_INDEX)
        if cls is not None and (labels >= 0).any():
            loss = loss + F.cross_entropy(cls, labels, ignore_index=-1)
        return loss

    def _collate(self, loader: SampleLoader, batch: list[Sample]):
        torch = self.torch
        items = [loader.load(s) for s in batch]
        images = torch.from_numpy(np.stack([i[0] for i in items]))
        masks = None
        if any(i[1] is not None for i in items):
            shape = items[0][0].shape[1:]
            masks = torch.from_numpy(np.stack([i[1] if i[1] is not None else np.full(shape, IGNORE_INDEX, np.int64)
                                               for i in items]))
        labels = torch.tensor([i[2] for i in items], dtype=torch.int64)
        return images, masks, labels

    def _batch_loss(self, batch: list[Sample]):
        """The loss of one training batch."""
        images, masks, labels = self._collate(self.train_loader, batch)
        if images.shape[0] < 2 and self.spec.task != "segmentation":
            images, labels = images.repeat(2, 1, 1, 1), labels.repeat(2)  # batch norm needs two values
            masks = None if masks is None else masks.repeat(2, 1, 1)
        return self._loss(images, masks, labels)

    def _learning_rate(self, step: int) -> float:
        """Poly decay to 0 over the run."""
        return self.config.lr * (1 - step / (self.config.epochs * self.steps_per_epoch)) ** 0.9

    def train_epoch(self, epoch: int) -> EpochResult:
        config = self.config
        self.model.train()
        losses, seen, t0 = [], 0, time.monotonic()
        batches = [b for _ in range(config.repeat) for b in self.train_loader.batches(config.batch_size, shuffle=True)]
        for step, batch in enumerate(batches):
            for group in self.optimizer.param_groups:
                group["lr"] = self._learning_rate(epoch * self.steps_per_epoch + step)
            loss = self._batch_loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.max_grad_norm is not None:
                self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()
            losses.append(float(loss.detach()))
            seen += len(batch)
            _progress(epoch + 1, config.epochs, step + 1, len(batches), float(np.mean(losses[-10:])),
                      seen / (time.monotonic() - t0))
        return EpochResult(epoch + 1, float(np.mean(losses)), seen / (time.monotonic() - t0))

    def validate(self) -> dict[str, float]:
        torch = self.torch
        self.model.eval()
        confusion = ConfusionAccumulator(self.spec.metadata.num_classes)
        correct = total = 0
        with torch.inference_mode():
            for batch in self.val_loader.batches(1, shuffle=False):
                images, masks, labels = self._collate(self.val_loader, batch)
                seg, cls = self.spec.split_outputs(self.model(images))
                if seg is not None and masks is not None:
                    confusion.add(seg.argmax(1).numpy(), masks.numpy())
                if cls is not None:
                    known = labels >= 0
                    correct += int((cls.argmax(1)[known] == labels[known]).sum())
                    total += int(known.sum())
        metrics: dict[str, float] = {}
        if confusion.matrix.any():
            figures = scores(confusion.matrix, self.spec.metadata.class_names)
            metrics = {"pixel_accuracy": figures["pixel_accuracy"], "miou": figures["miou"]}
        if total:
            metrics["accuracy"] = correct / total
        return metrics

    def save(self, result: EpochResult, name: str) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / name
        tmp = path.with_name(path.name + ".tmp")
        self.torch.save({"model": self.config.model, "state_dict": self.model.state_dict(),
                         "optimizer": self.optimizer.state_dict(), "epoch": result.epoch, "best": self.best,
                         "metrics": result.metrics, "config": asdict(self.config)}, tmp)
        tmp.replace(path)
        return path

    def run(self, on_epoch: Callable[[EpochResult], None] | None = None) -> list[EpochResult]:
        """Train the remaining epochs, validating and saving after each (``on_epoch`` is
        called with each epoch's result as it is done)."""
        history = []
        for epoch in range(self.start_epoch, self.config.epochs):
            result = self.train_epoch(epoch)
            result.metrics = self.validate()
            score = next((result.metrics[k] for k in self.primary_metrics if k in result.metrics), 0.0)
            figures = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items())
            logger.info("epoch %d/%d: loss %.4f, %.1f img/s; validation: %s", result.epoch, self.config.epochs,
                        result.loss, result.images_per_s, figures)
            self.save(result, "last.pt")
            if score > self.best:
                self.best = score
                self.save(result, "best.pt")
            history.append(result)
            if on_epoch is not None:
                on_epoch(result)
        return history


def _progress(epoch: int, epochs: int, step: int, steps: int, loss: float, rate: float) -> None:
    """One progress line: a bar on a terminal (redrawn), a log line per epoch otherwise."""
    text = f"epoch {epoch}/{epochs} [{'#' * (20 * step // steps):<20}] {step}/{steps} loss {loss:.4f} {rate:.1f} img/s"
    if sys.stderr.isatty():
        sys.stderr.write("\r" + text + ("\n" if step == steps else ""))
        sys.stderr.flush()
    elif step == steps:
        logger.info(text)
