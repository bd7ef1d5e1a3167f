"""Where a run starts from, and what it says when a signal stops it.

Start points: nothing (a new run), ``resume=<run dir>`` (continue that run in place, with the overrides it was
started with, from its newest intact last.ckpt, in its W&B run), or ``ckpt_path=<file>`` (a new run from a
checkpoint's state; for evaluation, the checkpoint to test: the network is then rebuilt from it, never from the
config). Used by das2f.train.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from ..runtime.cli import in_multirun, sweep_note
from ..runtime.errors import CheckpointError, ConfigError, Interrupted, MissingFileError

log = logging.getLogger("das2f.train")


def start_point(cfg: DictConfig) -> tuple[DictConfig, str | None, dict | None]:
    """The run's config and its checkpoint (path and contents, read once; None for a new run): a resumed run
    takes its own overrides (then this command's) and thread setting, an evaluation the checkpoint's network,
    a checkpoint with a W&B run id continues that run."""
    if not cfg.get("train") and not cfg.get("ckpt_path"):
        raise ConfigError("evaluation needs a checkpoint: ckpt_path=<run dir> (its best-on-validation checkpoint) "
                          "or ckpt_path=<run dir>/checkpoints/<file>.ckpt")
    ckpt, saved = resolve_ckpt(cfg)
    if cfg.get("resume"):
        cfg = resumed_config(cfg, ckpt, saved)
        from ..runtime.threads import configure, run_setting

        configure(run_setting(cfg))  # the run's own setting (threads=1 or deterministic=true kept it reproducible)
    if ckpt:
        if not cfg.get("train"):
            net_from_checkpoint(cfg, ckpt, saved)
        resume_wandb_run(cfg, ckpt, saved)
    return cfg, ckpt, saved


def read_checkpoint(ckpt_path: str) -> dict:
    """A checkpoint's contents, read once (memory-mapped, torch's safe loader) for the checks before training."""
    from ..checkpoint import load_checkpoint

    return load_checkpoint(ckpt_path, mmap=True)


def check_checkpoint_classes(ckpt_path: str, ckpt: dict, class_names: list[str]) -> None:
    saved = ckpt.get("hyper_parameters", {}).get("class_names")
    if saved is not None and list(saved) != list(class_names):
        raise CheckpointError(f"checkpoint {ckpt_path} was trained on classes {list(saved)}, "
                              f"the dataset has {list(class_names)}: choose the matching dataset")


def task_overrides() -> list[str] | None:
    """The command-line overrides of this job (None outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def resume_wandb_run(cfg: DictConfig, ckpt_path: str, ckpt: dict) -> None:
    """A resumed checkpoint continues its W&B run: the id stored in the checkpoint, never typed by hand."""
    run_id = ckpt.get("das2f", {}).get("wandb_run_id")
    for c in (cfg.get("logger") or {}).values():
        if c is not None and str(c.get("_target_", "")).endswith("WandbLogger") and run_id:
            with open_dict(c):
                c.id, c.resume = run_id, "allow"
            log.info("resuming W&B run %s from %s", run_id, ckpt_path)


def latest_resumable(log_dir: str | Path, task: str = "train") -> Path | None:
    """The newest run directory (single runs and multirun jobs) holding checkpoints/last.ckpt."""
    root = Path(log_dir) / task
    found = [*root.glob("runs/*/checkpoints/last.ckpt"), *root.glob("multiruns/*/*/checkpoints/last.ckpt")]
    return max(found, key=lambda p: p.stat().st_mtime).parents[1] if found else None


def intact_last(run_dir: Path) -> tuple[str, dict]:
    """The newest intact resumable checkpoint of a run and its contents: last.ckpt, else the one before it
    (last.prev.ckpt) when last.ckpt is broken (a kill while it was written, a full disk); says which it took when
    it skipped one."""
    from ..checkpoint import LAST, resumable

    found = resumable(run_dir)
    if not found:
        raise MissingFileError(f"resume={run_dir}: no checkpoint at {run_dir / 'checkpoints' / LAST} (a run directory of "
                               "das2f.train holds checkpoints/last.ckpt once its first epoch ended or it was interrupted)")
    broken = []
    for path in found:
        try:
            ckpt = read_checkpoint(str(path))
        except CheckpointError as err:
            broken.append(str(err))
            continue
        if broken:
            log.warning("resume: %s; continuing from %s, the checkpoint written before it", "; ".join(broken), path)
        return str(path), ckpt
    raise CheckpointError(f"resume={run_dir}: no intact checkpoint: {'; '.join(broken)}")


def resolve_ckpt(cfg: DictConfig) -> tuple[str | None, dict | None]:
    """The checkpoint a run starts from and its contents, read once: ``resume=<run dir>`` -> its newest intact
    last.ckpt; ``ckpt_path=<file>``; (None, None) for a new run."""
    from ..checkpoint import best_of_run

    resume, ckpt = cfg.get("resume"), cfg.get("ckpt_path")
    if ckpt and ckpt != "last":
        ckpt = best_of_run(ckpt)
    if resume and ckpt:
        raise ConfigError(f"resume={resume} and ckpt_path={ckpt}: give one (resume continues a run in place)")
    if resume:
        return intact_last(Path(str(resume)))
    if ckpt == "last":
        latest = latest_resumable(cfg.paths.log_dir)
        hint = (f"the newest resumable run is {latest}: python -m das2f.train resume={latest}" if latest
                else f"no run under {cfg.paths.log_dir}/train has a checkpoints/last.ckpt")
        raise ConfigError(f"ckpt_path=last: a new run has no last.ckpt of its own; continue a run with "
                          f"resume=<its run dir>; {hint}")
    if ckpt and not Path(str(ckpt)).is_file():
        raise MissingFileError(f"ckpt_path: no checkpoint at {ckpt}")
    return (str(ckpt), read_checkpoint(str(ckpt))) if ckpt else (None, None)


def resumed_config(cfg: DictConfig, ckpt_path: str, ckpt: dict) -> DictConfig:
    """The config of the run being resumed: the overrides it was started with (stored in its checkpoint),
    then this command's (later win). Only possible under Hydra (the CLI)."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    saved = ckpt.get("das2f", {}).get("overrides")
    if saved is None:
        raise CheckpointError(f"{ckpt_path}: written by an older das2f without its run's overrides; continue it with "
                              "ckpt_path=<that file> plus the overrides the run was started with")
    if not HydraConfig.initialized():
        return cfg
    now = task_overrides() or []
    log.info("resuming %s with its overrides %s%s", Path(ckpt_path).parents[1], saved,
             f" then {now}" if now else "")
    return compose(config_name=HydraConfig.get().job.config_name, overrides=merged_overrides(saved, now))


def merged_overrides(saved: list[str], now: list[str]) -> list[str]:
    """The run's own overrides, then this command's: a key given again takes this command's value (its ``+key=``
    said again would be refused by Hydra as a second append; a ``+key`` of the run set anew becomes ``++key``).
    Keys and kinds as Hydra's own override parser reads them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    parser = OverridesParser.create()
    parse = lambda texts: list(zip(texts, parser.parse_overrides(list(texts))))  # noqa: E731
    again = {o.key_or_group for _, o in parse(now)}
    added = {o.key_or_group for _, o in parse(saved) if o.type == OverrideType.ADD}
    kept = [text for text, o in parse(saved) if o.key_or_group not in again]
    return kept + [f"++{text.lstrip('+')}" if o.key_or_group in added and o.type in (OverrideType.ADD, OverrideType.CHANGE)
                   else text for text, o in parse(now)]


def net_from_checkpoint(cfg: DictConfig, ckpt_path: str, ckpt: dict) -> None:
    """Evaluation rebuilds the network the checkpoint holds (stages, widths, backbone, fusion), not the config's."""
    net = ckpt["hyper_parameters"]["net"]  # load_checkpoint made sure it is there
    with open_dict(cfg):
        backend = cfg.model.net.get("scan_backend")
        cfg.model.net = OmegaConf.create(net)
        if backend is not None:
            cfg.model.net.scan_backend = backend  # where it runs, not what it is: this machine's choice


def slim_checkpoint(path: str) -> None:
    """Drop the optimizer and scheduler state from a finished run's best checkpoint (test, eval and predict
    read only the weights; resume reads last.ckpt). Written to a temporary file, then renamed."""
    import torch

    if not path or Path(path).name == "last.ckpt":
        return
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "optimizer_states" not in ckpt:
        return
    for key in ("optimizer_states", "lr_schedulers"):
        ckpt.pop(key, None)
    tmp = Path(path).with_suffix(".tmp")
    try:
        torch.save(ckpt, tmp)
        tmp.replace(path)
    except BaseException:  # an error or a stop signal: the full checkpoint stays, no half-written file
        tmp.unlink(missing_ok=True)
        raise


def stopped(cfg: DictConfig, phase: str, trainer=None) -> Interrupted:
    """The message and exit status of a run stopped by a signal (das2f.runtime.signals) during ``phase``."""
    import signal

    from ..checkpoint import LAST
    from ..runtime import signals

    sig = signals.received() or signal.SIGTERM
    out = Path(cfg.paths.output_dir)
    where = f" at epoch {trainer.current_epoch + 1}, step {trainer.global_step}" if trainer is not None else ""
    last = out / "checkpoints" / LAST
    if phase == "training" and last.is_file():
        then = f"{last} holds it" + ("" if in_multirun() else f": continue with python -m das2f.train resume={out}")
    elif phase == "training" or not cfg.get("train"):
        then = "nothing to continue from: the same command starts it again"
    else:
        best = trainer.checkpoint_callback.best_model_path if trainer is not None and trainer.checkpoint_callback else ""
        then = (f"training is complete; test its best checkpoint with python -m das2f.eval ckpt_path={best} and this "
                f"run's dataset overrides" if best else "training is complete")
    return Interrupted(f"stopped by {signals.signal_name(sig)} while {phase}{where}: {then}{sweep_note()}",
                       status=signals.exit_status(sig))


class Phase:
    """What a run is doing (for the message when a signal stops it), and its trainer once built."""

    def __init__(self):
        self.name, self.trainer = "starting", None

    def __call__(self, name: str, trainer=None) -> None:
        self.name, self.trainer = name, trainer or self.trainer
