"""Lightning wrapper: loss, two learning rates, warm-up + cosine schedule and validation AUC around a plain model."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import BinaryAUROC


class LesionClassifierModule(L.LightningModule):
    """Trains a FusionClassifier: `backbone_lr` for its image network, `lr` for the metadata MLP and fused layers.

    The validation AUC is a torchmetrics metric: under DDP its state (every score and label) is gathered from all
    ranks before the AUC is computed once, so it equals the single-process AUC on the same images.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        backbone_lr: float,
        weight_decay: float,
        warmup_epochs: float,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        self.val_auc = BinaryAUROC()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images, metadata)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        images, metadata, targets = batch
        loss = F.binary_cross_entropy_with_logits(self(images, metadata).float(), targets)
        self.log(
            "train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets), sync_dist=True
        )
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        images, metadata, targets = batch
        logits = self(images, metadata).float()
        loss = F.binary_cross_entropy_with_logits(logits, targets)
        self.val_auc.update(torch.sigmoid(logits), targets.long())
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(targets), sync_dist=True)
        self.log("val_auc", self.val_auc, on_epoch=True, prog_bar=True, batch_size=len(targets))

    def parameter_groups(self) -> list[dict]:
        image_net = list(self.model.image_net.parameters())
        ids = {id(p) for p in image_net}
        head = [p for p in self.model.parameters() if id(p) not in ids]
        return [
            {"name": "backbone", "params": image_net, "lr": self.hparams.backbone_lr},
            {"name": "head", "params": head, "lr": self.hparams.lr},
        ]

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.parameter_groups(), weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(total - 1, int(total * self.hparams.warmup_epochs / max(1, self.trainer.max_epochs)))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
        if warmup > 0:
            ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup)
            schedule = torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
        else:
            schedule = cosine
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
