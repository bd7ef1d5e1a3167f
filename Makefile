# das2f: every entry point is a make target. `make help` lists them.
SHELL := /bin/bash
# the checkout this Makefile is in: `make -f path/to/das2f/Makefile ...` works from any directory
# (outputs, data/ and logs/, go under the directory make runs in, like `python -m das2f.*`)
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV ?= $(ROOT)/.venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
DATASET ?= synthetic
EXP ?= ablation
ARGS ?=
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install test test-slow docs docs-serve train eval predict prepare sweep report bench bench-deps gpu-wheels gpu-site gpu-check gpu-deps experiment-gid5 experiment-protocols experiment-wv2 clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: DATASET=$(DATASET) EXP=$(EXP) ARGS='hydra overrides'"

install: $(STAMP) ## virtual environment: torch first (the CPU build; a CUDA machine keeps its torch), then das2f

$(STAMP): $(ROOT)/pyproject.toml
	@if command -v nvidia-smi >/dev/null 2>&1 && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then \
		echo "CUDA torch found: the venv uses it"; python3 -m venv --system-site-packages $(VENV); \
	else \
		python3 -m venv $(VENV) && $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q torch==$(TORCH_VERSION); \
	fi
	$(PY) -m pip install -q -e "$(ROOT)[dev,sweep,tensorboard]"
	$(PY) -c "from das2f.ops.scan_cpu import compile_kernels; compile_kernels()"
	@touch $(STAMP)

test: $(STAMP) ## the linter, the strict docs build, then the test suite (CI runs exactly this); slow and GPU tests left out
	cd $(ROOT) && $(PY) -m ruff check src tests experiments docs
	cd $(ROOT) && NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet --site-dir $$(mktemp -d)
	cd $(ROOT) && $(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

test-slow: $(STAMP) ## the slow tests too (DDP simulation, longer trainings), every documented command run end to end
	cd $(ROOT) && DAS2F_TEST_EVERY_COMMAND=1 $(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder -m "slow or not slow"

docs: $(STAMP) ## the documentation (docs/), built strictly into site/: a broken link or a page left out fails
	cd $(ROOT) && NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: $(STAMP) ## the documentation served at http://127.0.0.1:8000, rebuilt on every change
	cd $(ROOT) && NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

train: $(STAMP) ## train + test (default: the main job on the generated synthetic scene)
	$(PY) -m das2f.train dataset=$(DATASET) $(ARGS)

eval: $(STAMP) ## test metrics of a checkpoint: ARGS="ckpt_path=..."
	$(PY) -m das2f.eval dataset=$(DATASET) $(ARGS)

predict: $(STAMP) ## full-scene classification maps of a dataset's scenes: ARGS="ckpt_path=... [scenes=[a,b]] [stats=scene]"
	$(PY) -m das2f.predict dataset=$(DATASET) $(ARGS)

prepare: $(STAMP) ## cut a dataset's scenes into HDF5 patch pairs (ARGS=inspect=true: list each scene's sizes and label values)
	$(PY) -m das2f.prepare dataset=$(DATASET) $(ARGS)

sweep: $(STAMP) ## a ready sweep from conf/experiment/ (EXP=ablation|seeds|compare|zoo, or several: EXP="[gid5,zoo]"), ends with its report; JOBS=N: N jobs at once; SWEEP_DIR=a stopped sweep's dir: continue it
	@# the report also after a failed job (it lists the job and its error); the sweep's exit status is kept
	@before=$$(ls -td logs/train/multiruns/* 2>/dev/null | head -1); \
	$(PY) -m das2f.train -m 'experiment=$(EXP)' dataset=$(DATASET) $(if $(JOBS),hydra/launcher=local hydra.launcher.jobs=$(JOBS)) $(if $(SWEEP_DIR),hydra.sweep.dir=$(SWEEP_DIR)) $(ARGS); status=$$?; \
	after=$(if $(SWEEP_DIR),$(SWEEP_DIR),$$(ls -td logs/train/multiruns/* 2>/dev/null | head -1)); \
	if [ -n "$$after" ] && { [ "$$after" != "$$before" ] || [ -n "$(SWEEP_DIR)" ]; } && ls "$$after"/*/.hydra >/dev/null 2>&1; then \
		$(PY) -m das2f.report "$$after"; \
		if [ $$status -ne 0 ]; then echo "continue the sweep with: make sweep EXP=$(EXP) DATASET=$(DATASET)$(if $(JOBS), JOBS=$(JOBS))$(if $(ARGS), ARGS=\"$(ARGS)\") SWEEP_DIR=$$after"; fi; \
	fi; exit $$status

report: $(STAMP) ## Markdown + CSV table of multirun outputs: ARGS="path/to/multirun/dir ..."
	$(PY) -m das2f.report $(ARGS)

bench-deps: $(STAMP) ## comparison baselines for the benchmark (mamba-ssm without CUDA build, mambapy)
	MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE $(PY) -m pip install -q --no-build-isolation "mamba-ssm==2.3.2.post1"
	$(PY) -m pip install -q -e ".[bench]"

bench: $(STAMP) ## scan backends, whole network, data loader: table with ratios -> bench/results/
	$(PY) -m das2f.bench $(ARGS)

# --- a GPU machine with no package index (README, "On a GPU"): its own python3 holds CUDA torch, triton,
# lightning, torchmetrics, h5py; what else das2f needs travels in .whl/ (git-ignored), fetched beforehand.
GPU_PY ?= python3
WHEELS := $(ROOT)/.whl
GPU_SITE := /tmp/das2f-site
MAMBA_VERSION := 2.3.2.post1
GPU_ENV = export PYTHONPATH=$(ROOT)/src:$(GPU_SITE)$${PYTHONPATH:+:$$PYTHONPATH} PYTHONUNBUFFERED=1

gpu-wheels: $(STAMP) ## (here, with an index) the wheels a GPU machine lacks -> .whl/ (hydra, omegaconf, submitit; mamba-ssm sources)
	rm -rf $(WHEELS) && mkdir -p $(WHEELS)/src
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d $(WHEELS) \
		"hydra-core==1.3.2" "omegaconf==2.3.0" "submitit==1.5.4" "hydra-submitit-launcher==1.2.0"
	$(PY) -m pip wheel -q --no-deps -w $(WHEELS) "antlr4-python3-runtime==4.9.3"   # source only on the index: pure Python
	@# the source archives (pip reads their metadata here with the CUDA build skipped; nothing is compiled)
	MAMBA_SKIP_CUDA_BUILD=TRUE $(PY) -m pip download -q --no-deps --no-binary=:all: --no-build-isolation \
		-d $(WHEELS)/src "mamba-ssm==$(MAMBA_VERSION)"
	@du -sh $(WHEELS)

# (on the GPU machine) the carried wheels of .whl/ installed into /tmp/das2f-site; gpu-check does it first
gpu-site:
	@if [ -d $(WHEELS) ] && ls $(WHEELS)/*.whl >/dev/null 2>&1; then \
		$(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --upgrade --target $(GPU_SITE) $(WHEELS)/*.whl; fi

gpu-check: gpu-site ## (on an NVIDIA GPU machine, no index needed) CUDA tests, main jobs, GPU benchmark, ranked -> bench/gpu-<date>.md
	@$(GPU_ENV); $(GPU_PY) -c 'import torch, hydra; assert torch.cuda.is_available(), "no CUDA device"; \
		print("gpu-check:", torch.cuda.get_device_name(), "torch", torch.__version__, "CUDA", torch.version.cuda)'
	$(GPU_ENV) && $(GPU_PY) -m das2f.bench.gpu --out $(ROOT)/bench $(BENCH_ARGS)

gpu-deps: ## (on the GPU machine) build mamba-ssm from .whl/src for this GPU only; long: `setsid make gpu-deps > .whl/gpu-deps.log 2>&1 &`
	$(GPU_ENV) && $(GPU_PY) -m das2f.bench.gpu_deps $(WHEELS)/src/mamba_ssm-$(MAMBA_VERSION).tar.gz --target $(GPU_SITE)

experiment-gid5: $(STAMP) ## real Gaofen-2 tiles split by tile: DAS²F, CNN, ablations -> experiments/gid5/results/ (RUNS="variants:seeds ...", ALSO="earlier sweep dirs", CKPT=a checkpoint: its maps only)
	PY=$(PY) bash $(ROOT)/experiments/gid5/run.sh $(ARGS)

experiment-protocols: $(STAMP) ## real Gaofen-2 tiles under the pixel, block and tile splits, same model and seeds -> experiments/protocols/results/
	PY=$(PY) bash $(ROOT)/experiments/protocols/run.sh $(ARGS)

experiment-wv2: $(STAMP) ## real WorldView-2 scene, full map with the main job's model -> experiments/wv2/results/
	PY=$(PY) bash $(ROOT)/experiments/wv2/run.sh $(ARGS)

clean: ## remove what das2f generated: prepared files, the generated scene, logs, outputs, caches (never raw data, never the venv)
	rm -rf data/synthetic data/*/prepared data/*/.prepared.das2f.lock logs outputs multirun wandb bench/results .pytest_cache
