"""The LightningDataModule of a scene's windows for trainer.predict (see das2f.data.windows)."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from .transforms import normalize_pair
from .windows import SceneWindows


class SceneDataModule(L.LightningDataModule):
    """Streams the windows ``todo`` of a scene; under DDP each rank takes every world_size-th of them.
    Picklable (a spawned DDP process gets a copy): it holds the window index, never an open file."""

    def __init__(self, windows: SceneWindows, todo: np.ndarray, shift: np.ndarray, scale: np.ndarray,
                 num_workers: int = 2):
        super().__init__()
        self.windows, self.todo, self.num_workers = windows, np.asarray(todo), num_workers
        self.shift = torch.as_tensor(np.asarray(shift), dtype=torch.float32)
        self.scale = torch.as_tensor(np.asarray(scale), dtype=torch.float32)

    def predict_dataloader(self):
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        mine = [int(i) for i in self.todo[rank::world]]
        return DataLoader(self.windows, batch_size=None, sampler=mine, num_workers=self.num_workers,
                          persistent_workers=False, pin_memory=torch.cuda.is_available())

    def on_after_batch_transfer(self, batch, dataloader_idx):
        batch["ms"], batch["pan"] = normalize_pair(batch["ms"], batch["pan"], self.shift, self.scale)
        return batch
