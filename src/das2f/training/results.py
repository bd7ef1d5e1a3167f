"""What a run leaves behind: metrics.json, config.yaml, the confusion matrix; the console summary."""
from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from ..metrics import METRICS, format_metric, json_values


def write_results(cfg, metrics: dict, model, started: float | None = None, split: dict | None = None) -> Path:
    """``started``: time.perf_counter() at the start of the run (data preparation included); ``split``: the data
    module's split_record (protocol, overlap)."""
    from ..runtime import threads

    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = cfg.model.net  # the network that ran (for eval: the checkpoint's, see das2f.training.start.net_from_checkpoint)
    summary = {
        "dataset": cfg.dataset.name, "seed": int(cfg.seed), "net": net_name(net), **das2f_options(net),
        "parameters": sum(p.numel() for p in model.net.parameters()), "forward_flops": model.net.forward_flops(),
        "class_names": list(model.class_names), "metrics": json_values(metrics),
        "wall_seconds": round(time.perf_counter() - started, 1) if started else None, "machine": machine(),
        "split": split,
        "reproducibility": {"deterministic": bool(cfg.get("deterministic", False)),
                            "deterministic_algorithms": bool(cfg.trainer.get("deterministic", False)), **threads.used()},
    }
    if getattr(model, "test_confusion", None) is not None:
        summary["test_confusion"] = model.test_confusion.tolist()
        save_confusion_figure(model.test_confusion, model.class_names, out / "test_confusion.png")
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    return out


def net_name(net) -> str:
    """The net's name (its config's ``name``; a config written before the net group: das2f)."""
    return str(net.get("name") or "das2f")


def das2f_options(net) -> dict:
    """DAS²F's ablation options as the runs record them (nothing for another net)."""
    if net_name(net) != "das2f":
        return {}
    return {"stages": int(net.stages), "backbone": net.backbone, "fusion": net.fusion,
            "cmda": "swap" if net.swap else "none", "dominant": bool(net.dominant)}


def machine() -> dict:
    """Where the numbers were measured."""
    import os
    import platform

    import torch

    from .. import __version__

    return {"das2f": __version__, "host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def save_confusion_figure(conf, class_names, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = conf.float()
    norm = conf / conf.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(class_names), 1 + 0.6 * len(class_names)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_results(metrics: dict, class_names: list[str], out: Path, console: Console | None = None,
                  title: str = "test metrics (best-on-validation checkpoint)", split: dict | None = None) -> None:
    console = console or Console()
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for name, (label, _) in METRICS.items():
        if f"test/{name}" in metrics:
            t.add_row(label, format_metric(name, metrics[f"test/{name}"]))
    for name in class_names:
        if f"test/acc_{name}" in metrics:
            t.add_row(f"acc {name}", format_metric("acc", metrics[f"test/acc_{name}"]))
    console.print(t)
    share = (split or {}).get("overlap", {}).get("test", 0.0)
    if share:
        from ..data.prepare import PIXEL_SPLIT_NOTE

        console.print(f"test patches overlapping training patches: {100 * share:.1f} %", highlight=False)
        if "pixels" in split["protocol"].split("+"):
            console.print(PIXEL_SPLIT_NOTE, soft_wrap=True, highlight=False, markup=False)
    present = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(out).iterdir() if not p.name.startswith("."))
    console.print(f"outputs: {out} ({', '.join(present)})")
