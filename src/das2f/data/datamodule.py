"""Streaming HDF5 patch pairs into batches: lazy per-worker handles, chunk-shuffled contiguous reads."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..runtime.config import plain
from ..runtime.errors import CheckpointError, ConfigError
from .hdf5 import read_attrs
from .prepare import prepare_dataset, split_paths
from .transforms import joint_flip_rotate, normalize_pair, shift_scale

log = logging.getLogger("das2f.data")


class H5PatchDataset(Dataset):
    """Reads batches of patch pairs; an item is a sorted index array (from a batch sampler).

    The file opens lazily in the process that reads (each DataLoader worker) and the handle is
    dropped on pickling, so no h5py handle ever crosses a fork.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.attrs = read_attrs(self.path)  # validates the file before any training starts
        self.n = int(self.attrs["n"])
        self._f = None

    def __len__(self):
        return self.n

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_f"] = None
        return state

    def _file(self):
        if self._f is None:
            self._f = h5py.File(self.path, "r")
        return self._f

    def __getitem__(self, idx) -> dict:
        idx = np.sort(np.atleast_1d(np.asarray(idx, dtype=np.int64)))
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        f = self._file()
        sel = idx - lo  # one contiguous read of [lo, hi), then pick
        out = {k: f[k][lo:hi][sel] for k in ("ms", "pan", "label", "coord")}
        # raw dtype (uint8/uint16: 2-4x fewer bytes between worker and trainer); float32 in normalize()
        return {"ms": torch.from_numpy(out["ms"]), "pan": torch.from_numpy(out["pan"]),
                "label": torch.from_numpy(out["label"]), "coord": torch.from_numpy(out["coord"])}


class ChunkBatchSampler(Sampler):
    """Batches of indices that each lie inside one window of ``window`` consecutive samples.

    Shuffles window order every epoch (seeded by seed + epoch) and the samples within each
    window; with ``shuffle=False`` yields file order. Under DDP (rank/world_size given or read
    from torch.distributed) each rank takes every world_size-th window; shuffled (training) windows
    are padded to equal counts per rank, evaluation windows are not (each sample counted once).
    Trainers must set ``use_distributed_sampler=False`` (conf/trainer/ddp*.yaml do).
    """

    def __init__(self, n: int, batch_size: int, window: int = 512, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, rank: int | None = None, world_size: int | None = None):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
        self.rank, self.world_size = rank or 0, world_size or 1
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.window = max(window - window % batch_size, batch_size)
        if not shuffle and self.world_size > 1:
            self.window = batch_size  # evaluation under DDP: ranks take alternate batches (each rank gets one early)
        self.epoch = 0
        self.skip = 0  # batches of the current epoch already trained (a run resumed mid-epoch skips them once)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _windows(self):
        starts = np.arange(0, self.n, self.window)
        if self.shuffle:
            starts = np.random.default_rng([self.seed, self.epoch]).permutation(starts)
        if self.shuffle and self.world_size > 1:  # training: equal batch counts per rank (gradient sync), padded
            starts = np.resize(starts, math.ceil(len(starts) / self.world_size) * self.world_size)
        # evaluation: no padding, every sample counted exactly once over all ranks (metrics sync at epoch end)
        return starts[self.rank::self.world_size]

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for i, batch in enumerate(self._batches()):
            if i >= skip:
                yield batch
        self.epoch += 1 if self.shuffle else 0

    def _batches(self):
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        for s in self._windows():
            idx = np.arange(s, min(s + self.window, self.n))
            if self.shuffle:
                rng.shuffle(idx)
            for b in range(0, len(idx), self.batch_size):
                batch = idx[b:b + self.batch_size]
                if self.drop_last and len(batch) < self.batch_size:
                    continue
                yield batch

    def __len__(self):
        return sum(
            (min(self.window, self.n - s) // self.batch_size) if self.drop_last
            else math.ceil(min(self.window, self.n - s) / self.batch_size)
            for s in self._windows()
        )


class MsPanDataModule(L.LightningDataModule):
    """Prepared splits of one dataset. Batches: dicts with ms, pan (normalised), label, coord.

    A checkpoint restores it: its arguments are saved as hyper-parameters (plain containers) and its
    state (classes and their label values, patch geometry, normalisation and the training statistics)
    through ``state_dict``, so ``MsPanDataModule.load_from_checkpoint(path)`` alone gives
    the data module of the run, normalising with the statistics the network was trained on, even where
    the prepared files are absent (``class_names``, ``normalize``) and checking them where they are
    (``setup``: files prepared with other classes or patch geometry are refused).
    """

    def __init__(self, dataset: dict, batch_size: int = 64, num_workers: int = 2, normalization: str = "minmax",
                 augment: bool = False, window: int = 512, seed: int = 0, prepare: bool = True, worker_options=None,
                 stop_check=None):
        """``worker_options(num_workers, rank)`` (extra DataLoader arguments for the workers) and ``stop_check()``
        (called between the blocks of a preparation; raises to stop it): the entry points' signal policy
        (das2f.runtime.signals), handed over rather than imported; neither is saved in checkpoints."""
        super().__init__()
        if normalization not in ("minmax", "zscore"):
            raise ConfigError(f"data.normalization must be 'minmax' or 'zscore', got {normalization!r}")
        dataset = dict(plain(dataset))  # plain containers: the same fingerprint as `make prepare`, safe to save
        self.save_hyperparameters(ignore=["worker_options", "stop_check"], logger=False)
        self.worker_options, self.stop_check = worker_options, stop_check
        self.cfg = dataset
        self.restored: dict | None = None  # the state of a checkpoint (load_state_dict)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.normalization, self.augment, self.window, self.seed = normalization, augment, window, seed
        self.do_prepare = prepare
        self._paths: dict[str, Path] | None = None  # known once prepared (or looked up by setup)
        self.sets: dict[str, H5PatchDataset] = {}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, **kwargs):
        """The data module of a checkpoint, read once with torch's safe loader (Lightning's signature;
        ``kwargs`` override saved arguments). A checkpoint written before das2f saved the data module's
        arguments (2026-11-25) needs ``dataset=`` (its run's ``config.yaml`` holds it)."""
        from ..checkpoint import DATAMODULE_KEY, data_state, load_checkpoint

        ckpt = load_checkpoint(checkpoint_path, mmap=True)
        state = data_state(ckpt, checkpoint_path)
        if not ckpt.get(cls.CHECKPOINT_HYPER_PARAMS_KEY) and "dataset" not in kwargs:
            raise CheckpointError(
                f"{checkpoint_path}: holds the data state ({DATAMODULE_KEY}) but not the data module's arguments (written "
                "before das2f saved them); pass the dataset config: MsPanDataModule.load_from_checkpoint(path, "
                "dataset=...), e.g. the `dataset` of the run's config.yaml")
        kwargs.pop("weights_only", None)  # always the safe loader
        datamodule = cls(**{**ckpt.get(cls.CHECKPOINT_HYPER_PARAMS_KEY, {}), **kwargs})
        datamodule.load_state_dict(state)
        return datamodule

    @property
    def paths(self) -> dict[str, Path]:
        """The prepared split files this data module reads (<prepared_dir>/<fingerprint>/{train,val,test}.h5)."""
        if self._paths is None:
            self._paths = split_paths(self.cfg)
        return self._paths

    def prepare_data(self):
        if self.do_prepare:
            self._paths = prepare_dataset(self.cfg, check=self.stop_check)

    def setup(self, stage=None):
        for split, path in self.paths.items():
            if split not in self.sets:
                self.sets[split] = H5PatchDataset(path)
        if self.restored is not None:
            self._check_files(self.restored)
            return
        shift, scale = shift_scale(self.normalization, self.sets["train"].attrs)
        self.shift = torch.tensor(shift, dtype=torch.float32)
        self.scale = torch.tensor(scale, dtype=torch.float32)

    def state_dict(self) -> dict:
        """What a checkpoint needs to prepare new data as in training (Lightning saves it in every
        checkpoint): dataset, classes and their label values, patch geometry, normalisation."""
        if self.restored is not None and not self.sets:
            return dict(self.restored)
        attrs = self.sets["train"].attrs
        return {"dataset": self.cfg.get("name"), "class_names": list(attrs["class_names"]),
                "class_values": [int(v) for v in attrs["class_values"]], "ms_patch": int(attrs["ms_patch"]),
                "ratio": int(attrs["ratio"]), "ms_channels": int(attrs["ms_shape"][0]),
                "normalization": self.normalization,
                "shift": [float(v) for v in self.shift], "scale": [float(v) for v in self.scale]}

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint's data state (Lightning calls this on load_from_checkpoint, resume and a test from a
        checkpoint): from now on batches are normalised with the statistics the network was trained on."""
        self.restored = dict(state)
        if state["normalization"] != self.normalization:
            log.warning("data.normalization=%s, but the checkpoint was trained with %s: normalising with the "
                        "checkpoint's", self.normalization, state["normalization"])
        self.normalization = state["normalization"]
        self.shift = torch.tensor(state["shift"], dtype=torch.float32)
        self.scale = torch.tensor(state["scale"], dtype=torch.float32)
        if self.sets:
            self._check_files(self.restored)

    def _check_files(self, state: dict) -> None:
        """The prepared files must hold what the checkpoint was trained on: same classes, values, geometry."""
        attrs = self.sets["train"].attrs
        found = {"class_names": list(attrs["class_names"]), "class_values": [int(v) for v in attrs["class_values"]],
                 "ms_patch": int(attrs["ms_patch"]), "ratio": int(attrs["ratio"])}
        if "ms_channels" in state:
            found["ms_channels"] = int(attrs["ms_shape"][0])
        wrong = {k: (v, state[k]) for k, v in found.items() if v != (list(state[k]) if isinstance(v, list) else state[k])}
        if wrong:
            what = "; ".join(f"{k} {v!r}, the checkpoint's {w!r}" for k, (v, w) in wrong.items())
            raise ConfigError(f"{self.paths['train']}: prepared with {what}: this data does not match the checkpoint "
                              f"(prepare it as in training, or choose the checkpoint of this dataset)")

    @property
    def class_names(self) -> list[str]:
        if self.sets:
            return list(self.sets["train"].attrs["class_names"])
        return list(self.restored["class_names"]) if self.restored else list(self.cfg["classes"])

    @property
    def split_record(self) -> dict | None:
        """How the prepared files were split and how far val / test patches overlap training patches (share of
        patches reading a pixel that a training patch reads), for metrics.json; None before setup()."""
        if not self.sets:
            return None
        attrs = self.sets["train"].attrs
        return {"prepared": str(self.paths["train"].parent), "protocol": attrs["split_protocol"],
                "blocks": attrs["split_blocks"] or None,
                "overlap": {s: round(float(v["share"]), 6) for s, v in attrs["overlap"].items()},
                "patches": {s: int(self.sets[s].n) for s in self.sets}}

    @property
    def ms_channels(self) -> int:
        if not self.sets and self.restored and "ms_channels" in self.restored:
            return int(self.restored["ms_channels"])
        return int(self.sets["train"].attrs["ms_shape"][0])

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.sets[split]
        sampler = ChunkBatchSampler(len(ds), self.batch_size, self.window, shuffle=shuffle, seed=self.seed)
        rank = self.trainer.global_rank if self.trainer is not None else 0
        # the workers' seeds come from a generator of the loader's own: the global one is the model's (dropout,
        # augmentation), saved in checkpoints, and a loader started on resume would otherwise draw from it
        return DataLoader(ds, batch_size=None, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
                          generator=torch.Generator().manual_seed(self.seed),
                          **(self.worker_options(self.num_workers, rank) if self.worker_options else {}))

    def train_dataloader(self):
        loader = self._loader("train", True)
        fit_loop = self.trainer.fit_loop if self.trainer is not None else None
        if fit_loop is not None and fit_loop.restarting:
            # resumed mid-epoch (e.g. after SIGTERM): continue the interrupted epoch's batch order where it stopped
            loader.sampler.set_epoch(fit_loop.epoch_progress.current.processed)
            loader.sampler.skip = fit_loop.epoch_loop.batch_progress.current.ready
        return loader

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def normalize(self, batch: dict) -> dict:
        batch["ms"], batch["pan"] = normalize_pair(batch["ms"], batch["pan"], self.shift, self.scale)
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx):
        batch = self.normalize(batch)
        if self.augment and self.trainer is not None and self.trainer.training:
            batch = joint_flip_rotate(batch)
        return batch
