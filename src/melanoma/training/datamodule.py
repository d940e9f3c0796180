"""Data loaders for training, built after the distributed setup so that each rank knows its share.

Training draws melanoma `oversample` times as often (a weighted sampler that Lightning shards across ranks);
validation gives every image to exactly one rank, never padding with repeats, so the gathered AUC is exact.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, WeightedRandomSampler

from melanoma.data.dataset import default_num_workers, prepared_dataset
from melanoma.rundir import Preprocessing


class LesionDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_dir: Path,
        train_rows: pd.DataFrame,
        val_rows: pd.DataFrame,
        train_features: np.ndarray,
        val_features: np.ndarray,
        preprocessing: Preprocessing,
        batch_size: int,
        oversample: float = 1.0,
        color_jitter: float = 0.0,
        num_workers: int | None = None,
    ) -> None:
        super().__init__()
        self.train_set = prepared_dataset(
            data_dir, train_rows, train_features, preprocessing.transforms(train=True, color_jitter=color_jitter)
        )
        self.val_set = prepared_dataset(data_dir, val_rows, val_features, preprocessing.transforms(train=False))
        self.train_weights = np.where(train_rows["target"].to_numpy() == 1, oversample, 1.0)
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers

    def _loader(self, dataset, sampler, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=drop_last,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        weights = torch.as_tensor(self.train_weights, dtype=torch.double)
        sampler = WeightedRandomSampler(weights, len(weights), replacement=True)
        return self._loader(self.train_set, sampler, drop_last=len(weights) > self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_set) == 0:
            return []
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:
            sampler = UnrepeatedDistributedSampler(
                self.val_set, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
            )
        return self._loader(self.val_set, sampler)
