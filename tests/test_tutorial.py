"""docs/tutorial.md, as typed: its commands run in order, as processes, in a fresh working directory (the
checkout's experiments/ linked in, as from the checkout's root). Making the scene, the refused and the aligned
inspection and the preparation run by default; training, evaluation and the map are slow."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "tutorial.md"


def tutorial_commands() -> list[str]:
    """The commands of the page's bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), re.S)
    return [ln.split("  #")[0].strip() for block in blocks for ln in block.splitlines() if ln.strip()]


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "WANDB_MODE": "offline"}
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("tutorial")
    (cwd / "experiments").symlink_to(ROOT / "experiments", target_is_directory=True)
    return cwd


def test_the_tutorial_page_lists_what_this_test_runs():
    commands = tutorial_commands()
    assert commands[0] == "python experiments/tutorial/make_scene.py" and len(commands) == 7, commands
    assert (ROOT / "docs" / "assets" / "tutorial-map.png").is_file() and "assets/tutorial-map.png" in PAGE.read_text()


def test_the_tutorial_makes_inspects_aligns_and_prepares_as_typed(workdir):
    make, refused, inspect, prepare = tutorial_commands()[:4]
    assert run(make, workdir).returncode == 0
    assert all((workdir / "data" / "tutorial" / "raw" / f"{k}.tif").is_file() for k in ("ms", "pan", "label"))
    r = run(refused, workdir)
    assert r.returncode == 2 and "it is off by 6.4; set `align: true`" in r.stdout + r.stderr, r.stdout + r.stderr
    r = run(inspect, workdir)
    assert r.returncode == 0 and "cover every value found" in r.stdout and "| 1340 |" in r.stdout, r.stdout
    r = run(prepare, workdir)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "test patches overlapping training patches (a pixel read by both): 0 of 480" in out, out


@pytest.mark.slow
def test_the_tutorial_trains_evaluates_and_maps_as_typed(workdir):
    """Ends in the map the page shows: a COG with the nodata corner, beside its confidence."""
    import rasterio

    if not (workdir / "data" / "tutorial" / "prepared").is_dir():
        test_the_tutorial_makes_inspects_aligns_and_prepares_as_typed(workdir)
    for command in tutorial_commands()[4:]:
        r = run(command, workdir)
        assert r.returncode == 0, (command, r.stdout[-3000:], r.stderr[-3000:])
    with rasterio.open(workdir / "maps" / "tutorial" / "tutorial_map.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and src.nodata == 0 and src.crs.to_epsg() == 32649
        values = src.read(1)
    assert values[-1, 0] == 0 and values[0, -1] > 0  # the south-west corner: nodata; the rest classified
    assert (workdir / "maps" / "tutorial" / "tutorial_confidence.tif").is_file()
    assert (workdir / "maps" / "tutorial" / "tutorial_map.png").is_file()
