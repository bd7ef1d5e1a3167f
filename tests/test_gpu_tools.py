"""The GPU tooling that must work the first time it meets a GPU: mamba-ssm's build restricted to one architecture,
the launchers without submitit, the benchmark at toy sizes."""
import ast
import re

import pytest

from das2f.bench.gpu_deps import GENCODE, restrict_arches

# the layout of mamba-ssm 2.3.2.post1's setup.py (a pair per architecture, some inside version checks)
SETUP = '''
if True:
    if True:
        cc_flag.append("-gencode")
        cc_flag.append("arch=compute_75,code=sm_75")
        cc_flag.append("-gencode")
        cc_flag.append("arch=compute_80,code=sm_80")
        if bare_metal_version >= Version("11.8"):
            cc_flag.append("-gencode")
            cc_flag.append("arch=compute_90,code=sm_90")
        if bare_metal_version >= Version("12.8"):
            cc_flag.append("-gencode")
            cc_flag.append("arch=compute_100,code=sm_100")
'''


def test_mamba_build_keeps_only_the_gpus_architecture():
    out = restrict_arches(SETUP, "90")
    ast.parse(out)  # the emptied version checks still parse
    assert GENCODE.findall(out) == [("        ", "90")]
    flags = []
    exec(compile(out, "setup.py", "exec"), {"cc_flag": flags, "bare_metal_version": 12.9, "Version": float})
    assert flags == ["-gencode", "arch=compute_90,code=sm_90"]


def test_an_unknown_setup_layout_is_refused():
    with pytest.raises(RuntimeError, match="layout changed"):
        restrict_arches("cc_flag.append('-gencode')\n", "90")


@pytest.mark.slow  # a main job and the GPU benchmark at toy sizes (about 45 s): `make test-slow`
def test_gpu_check_steps_run_without_the_packages_the_gpu_machine_lacks(tmp_path):
    """The GPU machine has no wandb and no rasterio (README, "On a GPU"); hydra and omegaconf travel as wheels.
    gpu-check's main job and benchmark must not need them: here both are made unimportable (stub packages
    that raise ImportError, first on the path), and the main job (toy sizes, CPU) and the benchmark's smoke
    run go through. Before: the main job crashed at its end on `import wandb`."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from .test_cli import SIZE

    blocked = tmp_path / "blocked"
    for name in ("wandb", "rasterio"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name}: not on the GPU machine')\n")
    env = {**{k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")},
           "PYTHONPATH": str(blocked)}
    for args in (["das2f.train", *SIZE], ["das2f.bench.gpu", "--device", "cpu", "--tiny", "--no-compile",
                                          "--workers", "0", "--out", str(tmp_path / "bench")]):
        r = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, capture_output=True, text=True, env=env,
                           timeout=600)
        assert r.returncode == 0, (args[0], r.stderr[-3000:])
    assert list((tmp_path / "logs").rglob("metrics.json"))
    # the benchmark at toy sizes on the CPU: every code path but CUDA's timers, so a rare GPU session does not
    # find a broken script. The page has every section, its rows ranked, none failed.
    import torch

    from das2f.bench import gpu as bench_gpu

    (report,) = Path(tmp_path / "bench").glob("gpu-*.md")
    text = report.read_text()
    assert "FAILED" not in text and "skipped: past" not in text, text
    sections = [line.split(":")[0].split(" (")[0] for line in text.splitlines() if line.startswith("## ")]
    triton = "## Triton launch settings"  # where its interpreter runs (TRITON_INTERPRET=1, as in the tests)
    assert (triton in sections) == ("triton" in bench_gpu.available_backends(torch.device("cpu")))
    assert [s for s in sections if s != triton] == [
        "## CUDA parity", "## Whole network, samples/s", "## 1-epoch main jobs", "## Selective scan",
        "## Full-scene map", "## Data loader", "## A 4-job sweep on the one GPU", "## Against the targets"]
    for precision in ("32-true", "bf16-mixed"):
        assert f"| torch | {precision} | no | 1 | 4 |" in text
    assert "| torch | bf16-mixed | no | 2 | 4 |" in text  # the 2-stage network
    assert re.search(r"\| torch \| 32-true \| \d+ \| \d+\.\d\d \| \d+\.\d\d \|", text)  # main job: OA read
    assert re.search(r"\| 2 \| 2 \| \d+ \| [\d,]+ \|", text)  # the sweep at 2 jobs at once: both finished


def test_launchers_name_what_is_missing(tmp_path):
    """The GPU machine lacks submitit and hydra-submitit-launcher unless `make gpu-wheels` carries them: choosing
    hydra/launcher=local there says so, instead of Hydra's "Unknown plugin class"."""
    import os
    import subprocess
    import sys

    blocked = tmp_path / "blocked"
    for name in ("submitit", "hydra_plugins/hydra_submitit_launcher"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name}: not on the GPU machine')\n")
    r = subprocess.run([sys.executable, "-m", "das2f.train", "-m", "seed=1,2", "hydra/launcher=local"], cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(blocked)}, timeout=300)
    assert r.returncode != 0
    assert "hydra/launcher=local needs hydra-submitit-launcher and submitit" in r.stderr, r.stderr[-2000:]
    assert "make gpu-wheels" in r.stderr and "Unknown plugin class" not in r.stderr
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").rglob("metrics.json"))
