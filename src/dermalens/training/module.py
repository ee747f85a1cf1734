"""What is learned: the classifier, its loss, optimiser and validation metrics."""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict

import lightning as L
import numpy as np
import torch
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAUROC, MulticlassStatScores

from .. import __version__
from ..classes import CLASS_CODES
from ..config import LossSection, ModelSection, OptimizerSection, SchedulerSection, TrainingSection, section

# The key under which dermalens keeps what inference needs inside a Lightning
# checkpoint, so a checkpoint can be used without the training config.
from ..models.checkpoint import CHECKPOINT_KEY, non_finite_tensors
from ..models.classifier import ModelConfig, create_classifier
from .errors import TrainingDiverged
from .losses import build_loss, distillation_loss

PLATEAU_KEY = "dermalens_plateau_scheduler"


class ValidationMetrics(MetricCollection):
    """Accuracy, and balanced accuracy, macro F1 and macro AUC over the classes present in the targets.

    torchmetrics' own macro averages count a class absent from the validation
    split as recall 0 (when it is predicted) and AUC 0, so a split without
    one class would log, save and select on numbers that are too low. Here
    absent classes are left out of the average, as in the evaluation report
    (n/a there) and scikit-learn's balanced_accuracy_score. Per-class states
    are synced across DDP ranks by torchmetrics before compute().
    """

    def __init__(self, num_classes: int):
        # Accuracy, recall and F1 all follow from the per-class counts: one state for the three.
        super().__init__({
            "stats": MulticlassStatScores(num_classes, average=None),
            "auc": MulticlassAUROC(num_classes, average=None),
        }, compute_groups=False)

    def compute(self) -> dict[str, torch.Tensor]:
        with warnings.catch_warnings():   # "no positive samples" for absent classes: they are left out below
            warnings.filterwarnings("ignore", message=".*(positive|negative) samples.*")
            values = super().compute()
        tp, fp, _, fn, support = values["stats"].double().unbind(dim=1)   # per class
        present = support > 0
        recall = tp[present] / support[present]
        f1 = 2 * tp[present] / (2 * tp + fp + fn)[present]   # over the classes present, as metrics.py
        return {
            "accuracy": (tp.sum() / support.sum()).float(),
            "balanced_accuracy": recall.mean().float(),
            "macro_f1": f1.mean().float(),
            "auc_macro": values["auc"][present].mean(),
        }


def validation_metrics(num_classes: int) -> ValidationMetrics:
    return ValidationMetrics(num_classes)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int | float, steps_per_epoch: int | float,
                       settings: SchedulerSection, base_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Per step: linear warm-up from lr/10 over warmup_epochs, then cosine decay to min_lr at the last step."""
    total = max(1, int(total_steps))
    warmup = min(total - 1, int(round(settings.warmup_epochs * float(steps_per_epoch)))) if total > 1 else 0
    floor = min(1.0, settings.min_lr / base_lr)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class LesionClassifierModule(L.LightningModule):
    def __init__(self, model: dict, loss: dict, optimizer: dict, scheduler: dict, training: dict,
                 class_counts: list[int], classes: list[str] | tuple[str, ...] = CLASS_CODES,
                 load_pretrained: bool = True, inputs_are_trunk_activations: bool = False):
        # The config's sections, as plain dicts (what Lightning saves as hyperparameters); missing
        # keys take the one default in config.py, and an unknown key is an error.
        super().__init__()
        if len(classes) != len(class_counts):
            raise ValueError(f"{len(classes)} classes ({', '.join(classes)}) but {len(class_counts)} class counts")
        self.classes = list(classes)
        self.save_hyperparameters()
        self.training_settings = section(TrainingSection, training)
        self.optimizer_settings = section(OptimizerSection, optimizer)
        self.scheduler_settings = section(SchedulerSection, scheduler)
        model_settings = section(ModelSection, {k: v for k, v in model.items() if k != "num_classes"})
        self.model = create_classifier(ModelConfig(**asdict(model_settings), num_classes=len(self.classes)),
                                       load_pretrained=load_pretrained)
        channels_last = self.training_settings.channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.training_settings.compile:
            # torch.compile in place: the state_dict keys stay "model.*", so
            # checkpoints load without Lightning or compile.
            self.model.compile()
        self.channels_last = channels_last
        # A frozen trunk keeps its pretrained weights (and BatchNorm statistics): no gradient reaches it.
        self.freeze_stages = self.training_settings.freeze_stages
        if self.freeze_stages:
            for module in self.model.trunk_modules(self.freeze_stages):
                module.requires_grad_(False)
        # Batches hold the trunk's cached activations (training/frozen_trunk.py), not images.
        self.inputs_are_trunk_activations = bool(inputs_are_trunk_activations)
        if self.inputs_are_trunk_activations and not self.freeze_stages:
            raise ValueError("trunk activations as inputs need training.freeze_stages > 0")
        self.criterion = build_loss(section(LossSection, loss), class_counts)
        self.val_metrics = validation_metrics(len(self.classes))
        self.val_loss = MeanMetric()   # the plateau scheduler may monitor it
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.inputs_are_trunk_activations:
            return self.model.forward_from_trunk(x, self.freeze_stages)
        return self.model(x)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_stages:   # the frozen trunk's BatchNorm keeps its running statistics
            for module in self.model.trunk_modules(self.freeze_stages):
                module.eval()
        return self

    def training_step(self, batch, batch_idx):
        # (inputs, labels), or (inputs, labels, teacher logits) when the model is distilled from a teacher
        images, labels, *teacher = batch
        settings = self.training_settings
        distilling = settings.distillation_weight > 0
        if distilling and not teacher:
            raise ValueError("training.distillation_weight > 0 but the training batches carry no teacher logits")
        targets = (teacher[0].float() / settings.distillation_temperature).softmax(dim=1) if distilling else None
        alpha = settings.mixup_alpha
        if alpha > 0 and len(labels) > 1:
            # Each sample mixed with another of the batch; the loss mixed in the same proportion. The
            # weight comes from numpy's global stream, which ReseedEachEpoch seeds per epoch.
            weight = float(np.random.beta(alpha, alpha))
            partner = torch.from_numpy(np.random.permutation(len(labels))).to(labels.device)
            logits = self(weight * images + (1 - weight) * images[partner])
            loss = weight * self.criterion(logits, labels) + (1 - weight) * self.criterion(logits, labels[partner])
            if distilling:
                targets = weight * targets + (1 - weight) * targets[partner]
        else:
            logits = self(images)
            loss = self.criterion(logits, labels)
        if distilling:
            soft = distillation_loss(logits, targets, settings.distillation_temperature)
            self.log("train/distillation_loss", soft, on_step=False, on_epoch=True, batch_size=len(labels),
                     sync_dist=True)
            loss = (1 - settings.distillation_weight) * loss + settings.distillation_weight * soft
        # sync_dist: under DDP the epoch's loss over every process (one all-reduce an epoch), not the first's
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels),
                 sync_dist=True)
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
        # Already synced by torchmetrics (every process holds the same values): sync_dist only says so to Lightning.
        self.log_dict({k: v for k, v in values.items() if k != "val/loss"}, prog_bar=True, sync_dist=True)
        self.val_metrics.reset()
        self.val_loss.reset()
        if not self.trainer.sanity_checking and self.plateau is not None and self.scheduler_settings.name == "plateau":
            # Stepped here, before the checkpoint callbacks save at validation end, so
            # last.ckpt holds the scheduler as it is after this epoch. (Lightning steps a
            # plateau scheduler after saving and skips that step on resume, so a resumed
            # run would reduce the learning rate one epoch later than an uninterrupted one.)
            self.plateau.step(float(values[self.training_settings.monitor]))

    def configure_optimizers(self):
        opt, sched = self.optimizer_settings, self.scheduler_settings
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer_class = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(trainable, lr=opt.lr, weight_decay=opt.weight_decay)
        if sched.name == "cosine":
            return {"optimizer": optimizer, "lr_scheduler": {
                "scheduler": cosine_with_warmup(optimizer, self.trainer.estimated_stepping_batches,
                                                self.trainer.num_training_batches, sched, opt.lr),
                "interval": "step"}}
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=self.training_settings.monitor_mode, factor=sched.factor, patience=sched.patience,
            min_lr=sched.min_lr)
        if self._plateau_state is not None:
            self.plateau.load_state_dict(self._plateau_state)
        return optimizer

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Optimisers (and so the scheduler) are built after this hook on resume: keep the state until then.
        self._plateau_state = checkpoint.get(PLATEAU_KEY)
        if self._plateau_state is not None and self.plateau is not None:
            self.plateau.load_state_dict(self._plateau_state)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Before anything is written: a checkpoint of NaN weights would replace last.ckpt and become best.ckpt,
        # and predict would answer "nan%". The weights are the same on every DDP rank, so all ranks stop here.
        diverged = non_finite_tensors(checkpoint["state_dict"])
        if diverged:
            raise TrainingDiverged(
                f"training diverged in epoch {self.current_epoch + 1} (step {self.global_step}): {len(diverged)} "
                f"weight tensor(s) hold NaN or infinity (e.g. {diverged[0]}); no checkpoint was written from them "
                f"(an earlier one, if any, is kept): lower optimizer.lr, or check the data and loss settings")
        if self.plateau is not None:
            checkpoint[PLATEAU_KEY] = self.plateau.state_dict()
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        checkpoint[CHECKPOINT_KEY] = {
            "version": __version__,
            "classes": list(self.classes),
            "model_config": asdict(self.model.config),
            "preprocessing": self.model.preprocessing.to_dict(),
            "weights_source": self.model.weights_source,
            "val_metrics": metrics,
            "epoch": int(self.current_epoch),
        }
