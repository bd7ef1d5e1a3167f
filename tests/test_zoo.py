"""The alternatives (conf/net/): every net's shapes, size, learning and a run through the real entry point; the
refusal of DAS²F's own options with another net; the phases of the nets trained in two."""
import csv
import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from das2f.models.base import build_net
from das2f.runtime.errors import ConfigError
from das2f.train import run

from .conftest import compose_in

ROOT = Path(__file__).resolve().parents[1]
NETS = sorted(p.stem for p in (ROOT / "conf" / "net").glob("[!_]*.yaml"))
# the docs' reference geometry (docs/zoo.md's parameter table) and a second one: 3 bands, a 12-pixel patch, ratio 2
GEOMETRIES = [dict(ms_channels=4, ms_patch=16, ratio=4, num_classes=11),
              dict(ms_channels=3, ms_patch=12, ratio=2, num_classes=5)]
TINY = ["dataset.generate.size=48", "dataset.split.train=6", "dataset.split.val=3", "dataset.split.test=4",
        "data.num_workers=0", "data.batch_size=16", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]


def net_config(name: str, **geometry) -> dict:
    """conf/net/<name>.yaml as composed, with the given geometry in place of the dataset's."""
    from hydra import compose, initialize_config_dir

    from das2f.runtime.config import CONF_DIR

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"net={name}"])
    return {**OmegaConf.to_container(cfg.model.net, resolve=True), **geometry}


def batch(ms_channels, ms_patch, ratio, num_classes, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = ms_patch * ratio
    return (torch.randn(n, ms_channels, ms_patch, ms_patch, generator=g), torch.randn(n, 1, q, q, generator=g),
            torch.randint(0, num_classes, (n,), generator=g))


def docs_parameters() -> dict[str, int]:
    """docs/zoo.md's table of sizes: net -> parameters."""
    rows = re.findall(r"^\| `(\w+)` \|[^|]*\| ([\d,]+) \|", (ROOT / "docs" / "zoo.md").read_text(), re.M)
    return {name: int(count.replace(",", "")) for name, count in rows}


def test_every_net_has_a_config_and_the_zoo_sweeps_them_all():
    assert {"das2f", "mrfusion", "scpf", "crhff", "asymfusion", "mft", "bmoamamba", "cmsi_mamba"} <= set(NETS)
    zoo = OmegaConf.load(ROOT / "conf" / "experiment" / "zoo.yaml")
    assert sorted(zoo.hydra.sweeper.params.net.split(",")) == NETS and zoo.baseline == "net=das2f"
    for name in NETS:
        assert net_config(name)["name"] == name


@pytest.mark.parametrize("name", NETS)
def test_logits_shape_for_two_geometries_and_size_as_documented(name):
    for geometry in GEOMETRIES:
        net = build_net(net_config(name, **geometry)).eval()
        ms, pan, _ = batch(**geometry, n=3)
        with torch.no_grad():
            logits = net(ms, pan)
        assert logits.shape == (3, geometry["num_classes"]) and torch.isfinite(logits).all()
        if geometry is GEOMETRIES[0]:
            assert sum(p.numel() for p in net.parameters()) == docs_parameters()[name]
    with pytest.raises(ValueError, match="pan must be"):
        net(ms, pan[..., :-1, :-1])


@pytest.mark.parametrize("name", NETS)
def test_one_optimiser_step_lowers_the_loss_on_a_fixed_batch(name):
    """The loss each training step minimises (a phased net's, in each phase), before and after one Adam step on the
    same batch, with the same dropout masks."""
    geometry = GEOMETRIES[1]
    torch.manual_seed(0)
    net = build_net(net_config(name, **geometry)).train()
    ms, pan, label = batch(**geometry, n=8)
    criterion = torch.nn.CrossEntropyLoss()

    def loss(progress):
        torch.manual_seed(1)
        if hasattr(net, "training_loss"):
            return net.training_loss(ms, pan, label, criterion, progress)[0]
        return criterion(net(ms, pan), label)

    for progress in (0.0, 0.99):
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
        before = loss(progress)
        opt.zero_grad()
        before.backward()
        opt.step()
        assert loss(progress).item() < before.item(), (name, progress)


LIGHTER = {"crhff": ["model.net.width=32"]}  # its reconstruction network at a quarter of the width: a third of the FLOPs


@pytest.mark.parametrize("name", NETS)
def test_a_short_training_through_the_entry_point(name, tmp_path):
    metrics = run(compose_in(tmp_path, "train", [*TINY, f"net={name}", *LIGHTER.get(name, [])]))
    out = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert out["net"] == name and out["parameters"] > 0 and out["forward_flops"] > 0
    assert ("stages" in out) == (name == "das2f")
    assert 0 <= metrics["test/oa"] <= 1 and sum(map(sum, out["test_confusion"])) == 8 * 4


def test_das2f_options_with_another_net_are_refused_in_one_line():
    from das2f.runtime.checks import check_net_options

    check_net_options(["fusion=sum", "model.net.stages=2"])  # DAS²F's, with DAS²F
    check_net_options(["experiment=zoo"])
    check_net_options(["experiment=ablation"])
    for argv, key in ((["net=mft", "fusion=sum"], "fusion=sum"), (["-m", "net=das2f,scpf", "backbone=cnn"], "backbone"),
                      (["experiment=zoo", "model.net.stages=2"], "model.net.stages"),
                      (["experiment=[ablation,zoo]"], "backbone")):
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}.* is an option of net=das2f, named together with net="):
            check_net_options(argv)


@pytest.mark.parametrize("name, geometry, message", [
    ("cmsi_mamba", dict(ms_patch=15), r"^CMSIMamba: the MS patch must be even .*got ms_patch=15$"),
    ("mrfusion", dict(ms_patch=8, ratio=2), r"^MRFusion: .*MS patch >= 7 and a PAN patch >= 18 .*ms_patch=8 \(PAN 16\)$"),
])
def test_a_geometry_a_net_cannot_take_is_one_line_naming_it(name, geometry, message):
    with pytest.raises(ConfigError, match=message) as refused:
        build_net(net_config(name, **geometry))
    assert "\n" not in str(refused.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["crhff", "bmoamamba"])
def test_phased_nets_train_each_phase_and_a_stop_between_them_resumes_exactly(name, tmp_path):
    """Two epochs, the phase switch at half way: the first epoch trains phase 1 only, the second phase 2 only; a
    run stopped after the first epoch and resumed from its last.ckpt ends with the weights of one never stopped."""
    share = {"crhff": "model.net.recon_share=0.5",
             "bmoamamba": "model.net.stage1_share=0.5"}[name]
    extra = [f"net={name}", share, "trainer.max_epochs=2", "test=false", "deterministic=true"]
    if name == "bmoamamba":
        extra.append("model.net.groups=[[0,1,2,3],[4,5,6,7]]")
    whole = tmp_path / "whole"
    run(compose_in(whole, "train", [*TINY, *extra]))
    stopped = tmp_path / "stopped"
    run(compose_in(stopped, "train", [*TINY, *extra, "+callbacks.stop._target_=tests.helpers.StopAfterEpoch"]))
    last = stopped / "out" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    run(compose_in(stopped, "train", [*TINY, *extra, f"ckpt_path={last}"]))
    a = torch.load(whole / "out" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(last, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with open(whole / "out" / "csv" / "metrics.csv") as f:
        phases = {row["epoch"]: float(row["train/phase"]) for row in csv.DictReader(f) if row.get("train/phase")}
    assert phases == {"0": 1.0, "1": 2.0}


def test_a_checkpoint_written_before_the_net_group_still_evaluates(tmp_path):
    """Checkpoints of earlier versions hold DAS²F's config without a ``name``: eval rebuilds and scores them."""
    run(compose_in(tmp_path, "train", [*TINY, "test=false", "model.net.hidden=32"]))
    ckpt = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=True)
    del ckpt["hyper_parameters"]["net"]["name"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    out = run(compose_in(tmp_path, "train", [*TINY, f"ckpt_path={old}", "train=false"], output="eval"))
    assert 0 <= out["test/oa"] <= 1
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["net"] == "das2f"
