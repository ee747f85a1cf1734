"""What is learned: the classifier, its loss, optimiser and validation metrics."""
from __future__ import annotations

import lightning as L
import torch
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

from .. import __version__
from ..classes import CLASS_CODES, NUM_CLASSES

# The key under which dermalens keeps what inference needs inside a Lightning
# checkpoint, so a checkpoint can be used without the training config.
from ..models.checkpoint import CHECKPOINT_KEY
from ..models.classifier import ModelConfig, create_classifier
from .losses import build_loss

PLATEAU_KEY = "dermalens_plateau_scheduler"


def validation_metrics(num_classes: int) -> MetricCollection:
    # torchmetrics syncs these across DDP ranks before compute().
    return MetricCollection({
        "accuracy": MulticlassAccuracy(num_classes, average="micro"),
        "balanced_accuracy": MulticlassAccuracy(num_classes, average="macro"),
        "macro_f1": MulticlassF1Score(num_classes, average="macro"),
        "auc_macro": MulticlassAUROC(num_classes, average="macro"),
    })


class LesionClassifierModule(L.LightningModule):
    def __init__(self, model: dict, loss: dict, optimizer: dict, scheduler: dict,
                 class_counts: list[int], monitor: str = "val/balanced_accuracy", monitor_mode: str = "max",
                 channels_last: bool = False, load_pretrained: bool = True, compile: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.model = create_classifier(ModelConfig(**model), load_pretrained=load_pretrained)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if compile:
            # torch.compile in place: the state_dict keys stay "model.*", so
            # checkpoints load without Lightning or compile.
            self.model.compile()
        self.channels_last = channels_last
        self.criterion = build_loss(loss.get("name", "focal"), class_counts, gamma=loss.get("gamma", 2.0),
                                    alpha=loss.get("alpha"), label_smoothing=loss.get("label_smoothing", 0.0))
        self.val_metrics = validation_metrics(NUM_CLASSES)
        self.val_loss = MeanMetric()   # the plateau scheduler may monitor it
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = self.criterion(self(images), labels)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        loss = self.criterion(logits, labels)
        self.val_metrics.update(logits.softmax(dim=1), labels)
        self.val_loss.update(loss.detach().float(), weight=len(labels))
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(labels))

    def on_validation_epoch_end(self):
        values = {f"val/{k}": v for k, v in self.val_metrics.compute().items()}
        values["val/loss"] = self.val_loss.compute()
        self.log_dict({k: v for k, v in values.items() if k != "val/loss"}, prog_bar=True)
        self.val_metrics.reset()
        self.val_loss.reset()
        if not self.trainer.sanity_checking and self.plateau is not None:
            # Stepped here, before the checkpoint callbacks save at validation end, so
            # last.ckpt holds the scheduler as it is after this epoch. (Lightning steps a
            # plateau scheduler after saving and skips that step on resume, so a resumed
            # run would reduce the learning rate one epoch later than an uninterrupted one.)
            self.plateau.step(float(values[self.hparams.monitor]))

    def configure_optimizers(self):
        opt = self.hparams.optimizer
        optimizer = torch.optim.Adam(self.parameters(), lr=opt.get("lr", 1e-3),
                                     weight_decay=opt.get("weight_decay", 0.0))
        sched = self.hparams.scheduler
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=self.hparams.monitor_mode, factor=sched.get("factor", 0.5),
            patience=sched.get("patience", 2), min_lr=sched.get("min_lr", 1e-6))
        if self._plateau_state is not None:
            self.plateau.load_state_dict(self._plateau_state)
        return optimizer

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Optimisers (and so the scheduler) are built after this hook on resume: keep the state until then.
        self._plateau_state = checkpoint.get(PLATEAU_KEY)
        if self._plateau_state is not None and self.plateau is not None:
            self.plateau.load_state_dict(self._plateau_state)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.plateau is not None:
            checkpoint[PLATEAU_KEY] = self.plateau.state_dict()
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        checkpoint[CHECKPOINT_KEY] = {
            "version": __version__,
            "classes": list(CLASS_CODES),
            "model_config": dict(self.hparams.model),
            "preprocessing": self.model.preprocessing.to_dict(),
            "weights_source": self.model.weights_source,
            "val_metrics": metrics,
            "epoch": int(self.current_epoch),
        }
