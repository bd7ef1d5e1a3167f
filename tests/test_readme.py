"""Every command the README and the docs (docs/*.md) show, checked as a user types it (from a temporary working
directory, with size limits appended and nothing else: no path override). A command this file cannot check or does
not know fails the test, so the README, the docs and the code cannot drift apart.

A handful run end to end as processes (``END_TO_END``: the main job, a sweep and its report, eval, a map, prepare,
the help); every other das2f command has its config composed in-process exactly as its entry point would compose
it (the Makefile's recipe for make targets, every value of a swept key), resolved, and what it names (a checkpoint,
a run directory, a dataset's files) checked to exist; reports run in-process on the sweeps made before; other make
targets are dry-run (`make -n`). `make test-slow` runs every command end to end.

Placeholders in the README are capitals: NAME (a dataset: the generated `synthetic`), CKPT (a
checkpoint), RUN_DIR (a run directory), DIR (a multirun directory); they are filled in from the runs
that came before in the same directory.
"""
import itertools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import SHARED, compose_in

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = "\n".join(p.read_text() for p in PAGES)  # the README and every docs page

DATA = ["dataset.generate.size=48", "dataset.ms_patch=8", "dataset.split.train=6", "dataset.split.val=3", "dataset.split.test=4"]
SIZE = {  # size limits only, per entry point
    "train": [*DATA, "model.net.d_state=4", "model.net.dt_rank=4", "model.net.hidden=32", "data.num_workers=0",
              "data.batch_size=16", "trainer.max_epochs=1"],
    "eval": [*DATA, "data.num_workers=0"],
    "predict": ["dataset.generate.size=48", "num_workers=0", "region=[0,16,0,16]"],  # a corner: 256 of 2304 px
    "prepare": DATA,
    "report": [],
    "checkpoint": [],
}
GID5_SIZE = ["dataset.tiles.pattern=*/1.tif", "model.net.d_state=4", "model.net.dt_rank=4", "model.net.hidden=32",
             "data.num_workers=0", "data.batch_size=16", "trainer.max_epochs=1", "trainer.limit_train_batches=5",
             "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]
TARGET_TASK = {"train": "train", "eval": "eval", "predict": "predict", "prepare": "prepare", "sweep": "train",
               "report": "report"}

NOT_RUN = {  # README commands the test suite does not run, and why
    "make install": "CI runs it before the tests (.ci/run)",
    "make test": "this is the test run",
    "make test-slow": "runs this suite again",
    "make bench-deps": "installs comparison baselines from the package index",
    "make bench": "a timing run of minutes, measured alone, never in a test",
    "python -m das2f.bench.threads": "a timing run of minutes (part of make bench), never in a test",
    "make experiment-gid5": "hours of training on the real tiles (the README states its results)",
    "make experiment-wv2": "a full-scene map of minutes (the README states its results)",
    "make train ARGS=dataset.split_blocks=32": "the main job's scene under a block split: the tests' 48-pixel scene is "
                                               "too small for 32-pixel blocks (the full scene's block split: test_split)",
    "das2f train --config-dir /path/to/my-conf dataset=NAME": "a folder of the reader's own: "
        "test_layout.test_a_wheel_carries_its_configs_and_takes_a_users_config_dir trains with one",
    "make train DATASET=gid5 ARGS=\"net=mft\"": "one net on the real tiles; every net trains through the entry point "
                                                 "in test_zoo.test_a_short_training_through_the_entry_point",
    "make sweep EXP=zoo DATASET=my_dataset": "a dataset of the reader's own; the zoo sweep composes in test_zoo",
    "make sweep EXP=\"[gid5,zoo]\" DATASET=gid5": "24 trainings on the real tiles",
    "make experiment-protocols": "nine trainings on the real tiles, about 40 minutes (docs/splits.md states the results)",
    "das2f train -m dataset.split_blocks=64 dataset.split_folds=5 dataset.split_fold=0,1,2,3,4":
        "five trainings on a scene large enough for five folds of 64-pixel blocks; the folds: test_split",
    "make clean": "deletes outputs (what it leaves: test_layout.test_make_clean_leaves_raw_data_and_tracked_files)",
    "make gpu-check": "needs an NVIDIA GPU (test_gpu.py skips without one; its benchmark runs at toy sizes on the CPU in "
                      "test_precision.test_gpu_benchmark_runs_end_to_end_on_the_cpu)",
    "make gpu-deps": "compiles mamba-ssm's CUDA kernel: needs a GPU and nvcc (its setup.py rewrite: test_gpu_tools.py)",
    "make gpu-wheels": "downloads from the package index",
    "python -m das2f.bench.gpu": "part of make gpu-check, needs a GPU",
    "hydra/launcher=slurm": "needs a SLURM cluster (the config composes: test_train.test_sweep_configs_compose)",
    "das2f train resume=logs/tutorial/train": "continues the tutorial's run after a stop (resume=: test_signals)",
    "dataset=tutorial": "the tutorial's commands run as typed, in order, in tests/test_tutorial.py",
    "hydra/launcher=mycluster": "needs a SLURM cluster (docs/slurm.md's launcher config and commands compose: "
                                "test_the_slurm_how_to_composes_as_written)",
    "python -m das2f.*": "a pattern, not a command",
    "python -m das2f.checkpoint OLD.ckpt NEW.ckpt": "needs a checkpoint of an older das2f: "
                                                    "test_predict.test_checkpoints_describe_themselves_and_load_safely",
    "make sweep EXP=ablation": "48 jobs: slow, see test_ablation_sweep_as_typed",
    "make docs-serve": "serves the docs until stopped (make test builds them with --strict)",
    "make train ARGS=\"trainer=gpu trainer.precision=bf16-mixed\"": "needs a GPU (make gpu-check runs the main job there)",
    "das2f checkpoint OLD NEW": "needs a checkpoint of an older das2f: "
                                "test_predict.test_checkpoints_describe_themselves_and_load_safely",
    "make sweep": "EXP=ablation by default, 48 jobs: slow, see test_ablation_sweep_as_typed",
    "make docs": "make test builds the same documentation the same way first (mkdocs build --strict)",
    "make sweep ... SWEEP_DIR=": "a fragment in the text (`...`: the sweep's own options)",
    "make sweep EXP=compare": "the same sweep machinery as `make sweep EXP=seeds` (composed here), 6 jobs; the experiment "
                              "config composes and runs a batch in test_configs",
}
# commands the same as another one run here, once the placeholders are filled in (NAME is the generated dataset,
# make's default; the test gives every make command `-f` this checkout's Makefile): run once
SAME_AS = {
    "make train DATASET=NAME": "make train",
    f"make -f {ROOT / 'Makefile'} train": "make train",
    'make predict DATASET=NAME ARGS="ckpt_path=CKPT"': 'make predict ARGS="ckpt_path=CKPT"',
}


def readme_commands() -> list[str]:
    """`make ...`, `python -m das2f...` and `das2f ...` commands in the code blocks and inline code of the
    README and the docs."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        found += [ln.split("  #")[0].strip() for ln in block.splitlines()]
    found += re.findall(r"`((?:make|python -m das2f|das2f) [^`]*|das2f --help)`", README)
    out = []
    for c in found:
        c = " ".join(c.replace("\\|", "|").split())
        if c.startswith(("make", "python -m das2f", "das2f ")) and c not in out:
            out.append(c)
    return out


def expand(command: str) -> list[str]:
    """EXP=a|b|c -> one command per alternative; `make -f path/to/das2f/Makefile` -> this checkout's."""
    command = command.replace("path/to/das2f/Makefile", str(ROOT / "Makefile"))
    m = re.search(r"(\S+=)(\w+(?:\|\w+)+)", command)
    if not m:
        return [command]
    return [command.replace(m.group(0), m.group(1) + alt) for alt in m.group(2).split("|")]


def skip_reason(command: str) -> str | None:
    if command in SAME_AS and SAME_AS[command] in COMMANDS:
        return f"the same run as `{SAME_AS[command]}`, which runs"
    for key, why in NOT_RUN.items():
        if command == key or (key.startswith(("hydra", "make sweep ", "dataset=")) and key in command) or \
                (key == "make install" and command.startswith("make install")):
            return why
    return None


COMMANDS = [c for raw in readme_commands() for c in expand(raw)]


# run end to end as processes, first and in this order: what the later commands' placeholders name (CKPT, RUN_DIR,
# DIR) comes from them; `make test-slow` runs every command so
# (`make sweep EXP=seeds`, the sweep target's recipe, composes in-process here: its sweep is the one above, run end
# to end, and its report runs in-process on it; `make test-slow` runs it end to end)
END_TO_END = ["make train", "python -m das2f.train -m fusion=aalf,sum seed=1,2,3",
              'make eval ARGS="ckpt_path=CKPT"', 'make predict ARGS="ckpt_path=CKPT"',
              "make prepare DATASET=NAME ARGS=inspect=true", "das2f --help", "make help"]
EVERY_COMMAND = os.environ.get("DAS2F_TEST_EVERY_COMMAND") == "1"  # make test-slow: all end to end
# documented commands that `make test-slow` composes only: the tests' 48-pixel scene is too small for 32-pixel blocks
COMPOSED_ONLY = ["das2f train -m fusion=aalf,sum seed=1,2,3 dataset.split_blocks=32 trainer.max_epochs=2 "
                 "deterministic=true"]


def priority(command: str) -> int:
    """The end-to-end runs first, in their order; then the rest."""
    return END_TO_END.index(command) if command in END_TO_END else len(END_TO_END)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return {"cwd": tmp_path_factory.mktemp("readme"), "done": []}


def artifacts(cwd: Path) -> dict:
    runs = sorted((cwd / "logs" / "train" / "runs").glob("synthetic_*/checkpoints/epoch_*.ckpt"), key=lambda p: p.stat().st_mtime)
    multiruns = sorted((cwd / "logs" / "train" / "multiruns").glob("*"), key=lambda p: p.stat().st_mtime)
    return {"CKPT": str(runs[-1]) if runs else None, "RUN_DIR": str(runs[-1].parents[1]) if runs else None,
            "DIR": str(multiruns[-1]) if multiruns else None}


def as_run(command: str, cwd: Path) -> list[str]:
    """The argv of a README command with its placeholders filled and the size limits appended."""
    # continuing a sweep (the docs' compare sweep): a directory of its own, which the first such command starts and
    # the next continues; DIR elsewhere is the newest multirun (a report's)
    command = re.sub(r"\b(hydra\.sweep\.dir|SWEEP_DIR)=DIR\b", rf"\1={cwd / 'continued-sweep'}", command)
    found = artifacts(cwd)
    for key, value in found.items():
        if re.search(rf"\b{key}\b", command):
            if value is None:
                pytest.fail(f"README command {command!r} needs a {key}, but no earlier README command made one")
            command = re.sub(rf"\b{key}\b", value, command)
    command = re.sub(r"\bNAME\b", "synthetic", command)
    argv = shlex.split(command)
    gid5 = any(a in ("DATASET=gid5", "dataset=gid5") for a in argv)
    if gid5 and not (SHARED / "gid5").is_dir():
        pytest.skip("../shared/data/gid5 not present")
    if argv[0] == "das2f":  # the console command installed with the package
        exe = str(Path(sys.prefix) / "bin" / "das2f")
        task = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None
        return [exe, *argv[1:], *(SIZE[task] if task else [])]
    if argv[0] == "make":
        target = next(a for a in argv[1:] if not a.startswith("-") and "=" not in a and not a.endswith("Makefile"))
        task = TARGET_TASK.get(target)
        size = (GID5_SIZE if gid5 else SIZE[task]) if task else []
        args = [a for a in argv if a.startswith("ARGS=")]
        rest = [a for a in argv if not a.startswith("ARGS=")]
        merged = " ".join([a[len("ARGS="):] for a in args] + size)
        if "-f" not in rest:
            rest[1:1] = ["-f", str(ROOT / "Makefile")]
        return [*rest, f"VENV={sys.prefix}", f"ARGS={merged}"] if merged else [*rest, f"VENV={sys.prefix}"]
    task = argv[2].split(".", 1)[1]
    size = GID5_SIZE if gid5 else SIZE[task]
    if "hparams_search=optuna" in argv:
        size = [*size, "hydra.sweeper.n_trials=2"]
    return [sys.executable, *argv[1:], *size]


@pytest.mark.parametrize("command", sorted(COMMANDS, key=priority))
def test_readme_command_runs_as_typed(command, workdir):
    why = skip_reason(command)
    if why:
        pytest.skip(f"not run by the tests: {why}")
    argv = as_run(command, workdir["cwd"])
    if argv[0] == "make":
        stamp = Path(sys.prefix) / ".installed"
        if not stamp.is_file() or stamp.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
            pytest.skip(f"{stamp} missing or older than pyproject.toml: make would reinstall (run `make install`)")
    if command in END_TO_END or (EVERY_COMMAND and command not in COMPOSED_ONLY):
        env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
        r = subprocess.run(argv, cwd=workdir["cwd"], capture_output=True, text=True, env=env, timeout=900)
        assert r.returncode == 0, f"README command {command!r} ran as {argv} and failed:\n{(r.stdout + r.stderr)[-4000:]}"
    else:
        check_in_process(command, argv, workdir["cwd"])
    workdir["done"].append(command)


MAKE_TASKS = {"train": "train", "eval": "eval", "predict": "predict", "prepare": "prepare", "sweep": "train"}


def entry_call(argv: list[str]) -> tuple[str, list[str], bool] | None:
    """(entry config, its overrides, multirun) of a das2f command as the entry point or the Makefile's recipe
    would run it; None for the report and for make targets that run no das2f entry point."""
    if argv[0] == "make":
        words = dict(a.split("=", 1) for a in argv[1:] if "=" in a and not a.startswith("-"))
        target = next(a for a in argv[1:] if not a.startswith("-") and "=" not in a and not a.endswith("Makefile"))
        if target not in MAKE_TASKS:
            return None
        over = [f"dataset={words.get('DATASET', 'synthetic')}", *shlex.split(words.get("ARGS", ""))]
        if target != "sweep":
            return target, over, False
        jobs = ["hydra/launcher=local", f"hydra.launcher.jobs={words['JOBS']}"] if words.get("JOBS") else []
        return "train", [f"experiment={words.get('EXP', 'ablation')}", *jobs, *over], True
    if argv[0].endswith("/das2f"):
        task, args = argv[1], argv[2:]
    else:
        task, args = argv[2].split(".", 1)[1], argv[3:]
    if task == "report":
        return None
    return task, [a for a in args if a != "-m"], "-m" in args


def check_in_process(command: str, argv: list[str], cwd: Path) -> None:
    """The command's config composed and resolved as its entry point would, every value of a swept key included,
    and the files and directories it names present; a report run in-process; another make target dry-run."""
    call = entry_call(argv)
    if call is None and argv[0] == "make":
        r = subprocess.run([*argv[:1], "-n", *argv[1:]], cwd=cwd, capture_output=True, text=True)
        assert r.returncode == 0, f"{command!r}: make -n failed:\n{r.stderr[-2000:]}"
        return
    if call is None:  # the report: in-process, on the sweeps the end-to-end commands made
        from das2f.report import main

        args = argv[2:] if argv[0].endswith("/das2f") else argv[3:]
        here = os.getcwd()
        os.chdir(cwd)  # (--latest looks under the working directory's logs/)
        try:
            main(args)
        finally:
            os.chdir(here)
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    task, overrides, _ = call
    # a swept key (fusion=aalf,sum) as each of its values; the others as typed
    choices = [[f"{o.input_line.split('=', 1)[0]}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in OverridesParser.create().parse_overrides(overrides)]
    for combo in itertools.product(*choices):
        cfg = compose_in(cwd, task, list(combo))
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
        named = [cfg.get("ckpt_path"), cfg.get("resume"), None if cfg.dataset.get("generate") else cfg.dataset.raw_dir]
        for path in filter(None, named):
            assert Path(str(path)).exists(), f"{command!r} names {path}, which does not exist"


def test_every_readme_make_target_exists():
    targets = set(re.findall(r"^([a-z0-9-]+):.*## ", (ROOT / "Makefile").read_text(), re.M))
    used = {shlex.split(c)[1] for c in COMMANDS if c.startswith("make ") and not c.startswith("make -f")}
    used |= {"install", "train"}
    assert used <= targets, used - targets
    assert targets <= {shlex.split(c)[1] for c in COMMANDS if c.startswith("make ") and " -f " not in c} | {"train"}, \
        "a make target the README does not show"


@pytest.mark.slow
def test_ablation_sweep_as_typed(tmp_path):
    r = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "sweep", "EXP=ablation", f"VENV={sys.prefix}",
                        "ARGS=" + " ".join(SIZE["train"])], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    (multirun,) = (tmp_path / "logs" / "train" / "multiruns").glob("*")
    assert len(list(multirun.glob("*/metrics.json"))) == 48 and (multirun / "report.md").is_file()


def test_readme_is_short_and_every_docs_page_is_linked():
    """The README says what das2f is, the two commands, a tour and links: at most 15,000 bytes; every docs
    page is reachable from the README's list or the docs' own nav (mkdocs.yml; `make test` builds it strictly)."""
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) <= 15_000, len(readme)
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert page.name in nav, f"{page.name} is not in mkdocs.yml's nav"


def test_the_slurm_how_to_composes_as_written(tmp_path):
    """docs/slurm.md: its launcher config, saved where the page says, composes with das2f's slurm launcher under
    it; the page's sweep commands (the DDP one over two nodes too) compose with it and pass the config checks."""
    from hydra import compose, initialize_config_dir

    from das2f.runtime.checks import check_config
    from das2f.runtime.config import CONF_DIR

    page = (ROOT / "docs" / "slurm.md").read_text()
    (yaml_block,) = re.findall(r"```yaml\n(# conf/hydra/launcher/mycluster.yaml\n.*?)```", page, re.S)
    (tmp_path / "hydra" / "launcher").mkdir(parents=True)
    (tmp_path / "hydra" / "launcher" / "mycluster.yaml").write_text(yaml_block)
    commands = [" ".join(block.replace("\\\n", " ").split()) for block in re.findall(r"```bash\n(.*?)```", page, re.S)
                if "hydra/launcher=mycluster" in block and block.lstrip().startswith("das2f train")]
    assert len(commands) == 2, commands  # the sweep and the DDP one
    for command in commands:
        overrides = [o.replace("NAME", "synthetic") for o in command.split()[3:]]
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            cfg = compose("train", [*overrides, f"hydra.searchpath=[file://{tmp_path}]"], return_hydra_config=True)
        launcher = cfg.hydra.launcher
        assert launcher._target_.endswith("SlurmLauncher") and launcher.account == "my_project"
        assert launcher.qos == "normal" and launcher.setup[0] == "module load cuda/12.4"
        assert launcher.additional_parameters["mail-type"] == "FAIL" and launcher.timeout_min == 240
        check_config(cfg)
    assert cfg.trainer.num_nodes == 2 and launcher.nodes == 2 and launcher.tasks_per_node == cfg.trainer.devices == 4



def test_the_dataset_keys_tables_match_the_template_and_the_code():
    """docs/own-dataset.md's tables of dataset, scene and tile keys: every key of the template (set or commented
    out) is documented; the keys documented as required are those preparation requires (and the network's
    ms_channels); the scene and tile tables list exactly the keys a config may give (others are refused)."""
    from das2f.data.prepare import REQUIRED_KEYS
    from das2f.data.scenes import SCENE_KEYS
    from das2f.data.tiles import TILE_KEYS

    page = (ROOT / "docs" / "own-dataset.md").read_text()

    def table(header: str) -> dict[str, str]:
        """{key: the row's last cell} of the table under ``header``."""
        rows = page.split(header, 1)[1].split("\n\n", 1)[0].splitlines()[1:]
        out = {}
        for row in rows:
            cells = [c.strip() for c in row.strip("|").split("|")]
            out.update({k: cells[-1] for k in re.findall(r"`(\w+)`", cells[0])})
        return out

    dataset, scene, tile = (table("| key | meaning | default |\n"), table("| key | meaning |\n"),
                            table("| key of `tiles` | meaning |\n"))
    template = (ROOT / "conf" / "dataset" / "_template.yaml").read_text()
    top = set(re.findall(r"^#? ?(\w+):", template, re.M)) - {"a", "b"}
    assert top - set(dataset) == set(), top - set(dataset)
    required = {k for k, default in dataset.items() if default.startswith("required")}
    assert required == set(REQUIRED_KEYS) | {"ms_channels"}, required ^ (set(REQUIRED_KEYS) | {"ms_channels"})
    block = template.split("scenes:\n", 1)[1].split("\n\n", 1)[0]
    scene_keys = {k for ln in block.splitlines() for k in re.findall(r"(\w+):", ln.split("  #")[0].lstrip(" #-"))}
    assert scene_keys <= set(scene) == set(SCENE_KEYS), (scene_keys - set(scene), set(scene) ^ set(SCENE_KEYS))
    tiles_block = template.split("# tiles:\n", 1)[1]
    tile_keys = set(re.findall(r"^#   (\w+):", tiles_block, re.M))
    assert tile_keys <= set(tile) == set(TILE_KEYS), (tile_keys - set(tile), set(tile) ^ set(TILE_KEYS))


SETTINGS = ("default 420 s", "every 10 minutes")  # durations that are settings, not measurements


def test_user_pages_carry_no_date_timing_or_issue_number():
    """Dates, timings and history belong in Benchmarks and CHANGELOG.md: the README and every other docs page carry
    none (a duration that is a setting, such as a checkpoint interval, is named in SETTINGS)."""
    patterns = {
        "a date": r"\b20\d\d-\d\d-\d\d\b|\b(?:January|February|March|April|May|June|July|August|September|October|"
                  r"November|December) 20\d\d\b",
        "an issue number": r"(?<![\w&/])#\d+\b|\bissues? \d+\b",
        "a timing": r"\b\d+(?:\.\d+)?\s?(?:min|minutes?|s|sec|seconds?|ms|hours?|h)\b(?!\w)|"
                    r"\b\d[\d,.]*\s?(?:px|pixels|samples|it|steps)/s\b|\b\d+(?:\.\d+)?x (?:faster|slower)\b",
    }
    found = []
    for page in PAGES:
        if page.name == "benchmarks.md":
            continue
        for n, line in enumerate(page.read_text().splitlines(), 1):
            for what, pattern in patterns.items():
                found += [f"{page.name}:{n}: {what}: {m.group(0)!r}" for m in re.finditer(pattern, line)
                          if not any(s in line for s in SETTINGS)]
    assert not found, "\n".join(found)
