"""The values users edit most, checked before any work: a value of the wrong type or out of range is one line,
exit 2, naming the key, the value found and what is expected (not a TypeError deep inside a run).

One table, ``CHECKS``: a key (as a dotted path; absent keys are skipped, so the same table serves every entry
point and any dataset config, one from ``--config-dir`` included) -> what it must be. Lightning's own ``trainer``
keys beyond these, and keys a user adds with ``++``, pass through to the classes that take them.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError


def integer(low: int) -> tuple[str, Callable]:
    return f"an integer >= {low}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def number(low: float, inclusive: bool = False) -> tuple[str, Callable]:
    ok = (lambda v: v >= low) if inclusive else (lambda v: v > low)
    return (f"a number {'>=' if inclusive else '>'} {low:g}",
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and ok(v))


def choice(*values) -> tuple[str, Callable]:
    return f"one of {list(values)}", lambda v: v in values


def boolean() -> tuple[str, Callable]:
    return "true or false", lambda v: isinstance(v, bool)


def ratio_or_count() -> tuple[str, Callable]:
    return ("a ratio in (0, 1] (float), a count >= 0 (integer) or 'rest'",
            lambda v: v == "rest" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
            or (isinstance(v, float) and 0 < v <= 1))


CHECKS: dict[str, tuple[str, Callable]] = {
    "seed": integer(0),
    "threads": ("'auto' or an integer >= 1", lambda v: v == "auto" or integer(1)[1](v)),
    "deterministic": boolean(),
    "train": boolean(),
    "test": boolean(),
    "data.batch_size": integer(1),
    "data.num_workers": integer(0),
    "data.window": integer(1),
    "data.augment": boolean(),
    "data.normalization": choice("minmax", "zscore"),
    "model.optimizer.lr": number(0),
    "model.optimizer.weight_decay": number(0, inclusive=True),
    "model.scheduler.gamma": number(0),
    "model.label_smoothing": ("a number in [0, 1)", lambda v: number(0, inclusive=True)[1](v) and v < 1),
    "model.compile": boolean(),
    "model.net.stages": choice(1, 2),
    "model.net.d_model": integer(1),
    "model.net.d_state": integer(1),
    "model.net.dt_rank": integer(1),
    "model.net.hidden": integer(1),
    "model.net.dominant": boolean(),
    "trainer.max_epochs": ("an integer >= 1, or -1 (no limit)", lambda v: v == -1 or integer(1)[1](v)),
    "trainer.devices": ("an integer >= 1, -1 (all), a list of device ids, or a string ('auto', '0,1')",
                        lambda v: v == -1 or integer(1)[1](v) or isinstance(v, (list, str))),
    "confidence": boolean(),
    "dataset.ratio": integer(1),
    "dataset.ms_patch": integer(1),
    "dataset.ms_channels": integer(1),
    "dataset.split_blocks": ("null or an integer >= 1 (block side in MS pixels)", lambda v: v is None or integer(1)[1](v)),
    "dataset.split.train": ratio_or_count(),
    "dataset.split.val": ratio_or_count(),
    "dataset.split.test": ratio_or_count(),
}


_ABSENT = object()


def check_config(cfg: DictConfig) -> None:
    """Every key of ``CHECKS`` that the config has, against what it must be (resolved values)."""
    for key, (expected, ok) in CHECKS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        if value is _ABSENT:
            continue
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        if not ok(value):
            raise ConfigError(f"{key}={value!r}: expected {expected}")
    entries = [(f"dataset.scenes[{i}]", s) for i, s in enumerate(OmegaConf.select(cfg, "dataset.scenes", default=None) or [])]
    tiles = OmegaConf.select(cfg, "dataset.tiles", default=None)
    from ..data.scenes import SCENE_KEYS
    from ..data.tiles import TILE_KEYS

    for where, entry in entries + ([("dataset.tiles", tiles)] if tiles else []):
        known = TILE_KEYS if where == "dataset.tiles" else SCENE_KEYS
        unknown = [k for k in entry if k not in known]
        if unknown:  # a misspelt key would be ignored silently
            raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {list(known)}")
        for key, (expected, ok) in SCENE_CHECKS.items():
            if entry.get(key) is not None and not ok(entry[key]):
                raise ConfigError(f"{where}.{key}={entry[key]!r}: expected {expected}")


SCENE_CHECKS = {  # the keys of one scene entry (or of a tiles block, for every tile)
    "align": boolean(),
    "align_resampling": choice("bilinear", "cubic"),
    "nodata": ("null or a number: the pixel value meaning no data (in every band)",
               lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
}


# Options that belong to one net (the config group or key -> the net whose option it is): named on the command line
# or in an experiment together with another net, they are refused before anything is composed.
NET_OPTIONS: dict[str, str] = {
    "backbone": "das2f", "fusion": "das2f", "cmda": "das2f", "variant": "das2f", "model.net.stages": "das2f",
}
DEFAULT_NET = "das2f"


def experiment_overrides(name: str) -> list[str]:
    """What an experiment of conf/experiment/ names, as overrides: its defaults list's ``override /group: value``,
    its sweep's params and the NET_OPTIONS keys it sets (an experiment of a --config-dir is not read: [])."""
    from .config import CONF_DIR

    path = Path(CONF_DIR) / "experiment" / f"{name}.yaml"
    if not path.is_file():
        return []
    node = OmegaConf.load(path)
    found = []
    for entry in node.get("defaults") or []:
        for key, value in (entry.items() if isinstance(entry, DictConfig) else []):
            found.append(f"{str(key).removeprefix('override').strip().lstrip('/')}={value}")
    params = OmegaConf.select(node, "hydra.sweeper.params", default=None) or {}
    found += [f"{k}={v}" for k, v in params.items()]
    found += [f"{k}={OmegaConf.select(node, k)}" for k in NET_OPTIONS if "." in k and OmegaConf.select(node, k) is not None]
    return found


def check_net_options(overrides: list[str]) -> None:
    """Refuse a net's own options named together with another net (NET_OPTIONS), from the command line's overrides
    and the experiments they name; sweeps included (a sweep over nets and DAS²F's options is two sweeps)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides([o for o in overrides if not o.startswith("-")])
        given = [parser.parse_overrides(experiment_overrides(e)) for o in parsed if o.key_or_group == "experiment"
                 for e in values_of(o)]
    except HydraException:
        return  # a malformed override: Hydra's own message says which
    named: dict[str, list[str]] = {}
    for o in [*parsed, *(x for g in given for x in g)]:
        if o.is_delete():
            continue
        named.setdefault(o.key_or_group, []).extend(values_of(o))
    nets = named.get("net") or [DEFAULT_NET]
    for key, owner in NET_OPTIONS.items():
        others = [n for n in nets if n != owner]
        if key in named and others and named[key] != ["null"]:
            raise ConfigError(f"{key}={','.join(named[key])} is an option of net={owner}, named together with "
                              f"net={','.join(others)}; give it without {key} (a sweep over nets and {owner}'s "
                              f"options: one sweep each)")


def values_of(override) -> list[str]:
    """An override's value(s) as text: a sweep's each, a list's each (``experiment=[gid5,zoo]``), a value alone."""
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    value = override.value()
    return [str(v) for v in value] if isinstance(value, list) else ["null" if value is None else str(value)]
