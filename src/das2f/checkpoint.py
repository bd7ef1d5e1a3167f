"""Reading checkpoints, the one way: torch's safe loader (``weights_only=True``), never unpickling.

A das2f checkpoint describes itself with tensors and plain containers only:
- ``hyper_parameters``: the LightningModule's arguments (the network's config with ``_target_``,
  the optimizer's and scheduler's configs, the class names), so
  ``Das2fClassifier.load_from_checkpoint(path)`` alone rebuilds the model;
- ``MsPanDataModule``: the data module's state (dataset name, class names and values, patch
  geometry, normalisation kind and training statistics), so a scene is prepared as in training;
- ``das2f``: the run's Hydra overrides (for ``resume=``) and its W&B run id.

Checkpoints written before (they held Python objects: the optimizer as a functools.partial) are
refused with the command that converts them: ``python -m das2f.checkpoint OLD.ckpt NEW.ckpt``,
which reads them with an allow-list of exactly those objects, still without unpickling code.
"""
from __future__ import annotations

import argparse
import functools
import pickle
import sys
import zipfile
from pathlib import Path

from .runtime.config import update_moved_targets
from .runtime.errors import EXIT_USER_ERROR, CheckpointError, MissingFileError, UserError

DATAMODULE_KEY = "MsPanDataModule"  # Lightning stores a datamodule's state_dict under its class name
LAST, PREVIOUS = "last.ckpt", "last.prev.ckpt"  # in <run dir>/checkpoints/: the newest resumable state and the one before
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive (since torch 1.6)


def resumable(run_dir: str | Path) -> list[Path]:
    """A run's resumable checkpoints that exist, newest first: last.ckpt, then last.prev.ckpt."""
    return [p for p in (Path(run_dir) / "checkpoints" / LAST, Path(run_dir) / "checkpoints" / PREVIOUS) if p.is_file()]


def checkpoint_problem(path: str | Path) -> str | None:
    """What makes a file unreadable as a checkpoint, found without unpickling anything (None: a complete zip
    archive holding a pickled object, as torch.save writes). A file cut short by a kill, a full disk or an
    interrupted copy has lost the zip's end record."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty (0 bytes): not a checkpoint"
    with open(path, "rb") as f:
        head = f.read(4)
    if head != ZIP_MAGIC:
        return f"not a PyTorch checkpoint (torch.save writes a zip archive; this file of {size:,} bytes begins with {head!r})"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return f"truncated: {size / 1e6:.1f} MB of a zip archive without its end record (cut short while written or copied)"
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return f"not a PyTorch checkpoint (a zip archive without data.pkl: {', '.join(names[:3])}...)"
    return None


def best_of_run(path: str | Path) -> str:
    """``ckpt_path`` as given: a checkpoint file as it is, a run directory as its best-on-validation checkpoint
    (``checkpoints/epoch_NNN.ckpt``, the one checkpoint of an epoch a run keeps)."""
    run = Path(str(path))
    if not run.is_dir():
        return str(path)
    found = sorted((run / "checkpoints").glob("epoch_*.ckpt"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise MissingFileError(f"ckpt_path={run}: a run directory gives its best-on-validation checkpoint, "
                               f"checkpoints/epoch_NNN.ckpt; it holds {names}: name the file")
    return str(found[0])


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """A checkpoint's contents through torch's safe loader; old or foreign checkpoints are refused."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"ckpt_path: no checkpoint at {path}")
    problem = checkpoint_problem(path)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as err:  # a damaged archive member (torch's zip reader: CRC, sizes)
        raise CheckpointError(f"{path}: corrupt: {str(err).splitlines()[0][:200]}") from err
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: holds Python objects that das2f does not unpickle (a checkpoint written by an older das2f, or "
            f"not by das2f: {str(err).splitlines()[0][:160]}); convert an older das2f checkpoint with "
            f"`python -m das2f.checkpoint {path} NEW.ckpt`") from err
    if "state_dict" not in ckpt or "hyper_parameters" not in ckpt or "net" not in ckpt["hyper_parameters"]:
        raise CheckpointError(f"{path}: not a das2f checkpoint (no network config in its hyper_parameters)")
    update_moved_targets(ckpt["hyper_parameters"], where=str(path))  # written before the package move
    return ckpt


def data_state(ckpt: dict, path: str | Path = "checkpoint") -> dict:
    """The data module's state saved in a checkpoint (classes, patch geometry, normalisation)."""
    state = ckpt.get(DATAMODULE_KEY)
    if not state:
        raise CheckpointError(f"{path}: no data state ({DATAMODULE_KEY}: classes, patch geometry, normalisation); "
                              "it was not written by das2f.train")
    return state


# the class name hydra 1.3's `_partial_: true` objects were pickled under in older checkpoints
HYDRA_PARTIAL = "hydra._internal.target_policy._DeferredTarget"


class HydraPartial(functools.partial):
    """Read in place of HYDRA_PARTIAL (a functools.partial subclass holding two strings besides), so that converting
    needs nothing of hydra's internals: it is read back as the partial it is."""


def convert(old: Path, new: Path) -> None:
    """An older das2f checkpoint -> the self-describing, safely loadable form."""
    import torch
    from torch.optim import SGD, Adam, AdamW
    from torch.optim.lr_scheduler import CosineAnnealingLR, ExponentialLR, StepLR

    allowed = [functools.partial, Adam, AdamW, SGD, ExponentialLR, CosineAnnealingLR, StepLR,
               (HydraPartial, HYDRA_PARTIAL)]
    # OmegaConf containers (class names were saved as a ListConfig): data nodes and their metadata
    import collections
    import typing

    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

    allowed += [ListConfig, DictConfig, ContainerMetadata, Metadata, AnyNode, StringNode, IntegerNode, FloatNode,
                BooleanNode, typing.Any, list, dict, int, float, str, bool, collections.defaultdict]
    if not Path(old).is_file():
        raise MissingFileError(f"{old}: no such file")
    problem = checkpoint_problem(old)
    if problem:
        raise CheckpointError(f"{old}: {problem}")
    with torch.serialization.safe_globals(allowed):
        ckpt = torch.load(old, map_location="cpu", weights_only=True)
    info = ckpt.get("das2f") or {}
    if "net" not in info or "normalization" not in info:
        raise CheckpointError(f"{old}: no das2f run information to convert (not a das2f checkpoint)")
    from .runtime.config import plain

    hp = {k: plain(v) for k, v in dict(ckpt.get("hyper_parameters") or {}).items()}

    def as_config(p):
        if not isinstance(p, functools.partial):
            return p
        return {"_target_": f"{p.func.__module__}.{p.func.__qualname__}", "_partial_": True, **p.keywords}

    hp.update(net=info["net"], optimizer=as_config(hp.get("optimizer")), scheduler=as_config(hp.get("scheduler")))
    norm = info["normalization"]
    ckpt["hyper_parameters"] = hp
    ckpt[DATAMODULE_KEY] = {"dataset": info.get("dataset"), "class_names": list(info["class_names"]),
                            "class_values": list(info.get("class_values") or range(1, len(info["class_names"]) + 1)),
                            "ms_patch": int(info["ms_patch"]), "ratio": int(info["ratio"]),
                            "normalization": norm["kind"], "shift": list(norm["shift"]), "scale": list(norm["scale"])}
    ckpt["das2f"] = {k: info[k] for k in ("overrides", "wandb_run_id") if k in info}
    for key in ("optimizer_states", "lr_schedulers"):  # optimizer state of the old layout: resume from scratch
        ckpt.pop(key, None)
    torch.save(ckpt, new)
    load_checkpoint(new)  # the result loads safely


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Convert an older das2f checkpoint to the self-describing form.")
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    args = ap.parse_args(argv)
    try:
        if args.new.exists():
            raise CheckpointError(f"{args.new} exists; choose a new file name (nothing is overwritten)")
        convert(args.old, args.new)
    except UserError as err:
        print(f"das2f.checkpoint: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    print(f"written: {args.new} (weights and settings; the optimizer state is not kept)")


if __name__ == "__main__":
    main()
