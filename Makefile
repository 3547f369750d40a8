# earlytom-eval: everything runs from the virtual environment in .venv at the repo root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# `make smoke`: tiny random checkpoint + synthetic clips, then the real lmms-eval CLI on CPU with two configs.
SMOKE_OUT ?= results/smoke
SMOKE_DATA ?= results/smoke-data
SMOKE_CONFIGS ?= full earlytom_r0.10
SMOKE_FRAMES ?= 8

.PHONY: install lock test lint smoke clean FORCE

# `make install` installs exactly the versions in requirements.lock (made by `make lock` from setup.cfg's
# ranges with uv); `make install LOCKED=0` installs the newest versions within setup.cfg's ranges instead.
LOCKED ?= 1
LOCK := requirements.lock
# The stamp records how the venv was installed; asking for the other way re-runs the install.
STAMP_WANTED := $(if $(filter 0 no false,$(LOCKED)),newest,locked)
STAMP_FOUND := $(shell cat $(VENV)/.installed 2>/dev/null)

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml $(LOCK) $(if $(filter-out $(STAMP_WANTED),$(STAMP_FOUND)),FORCE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(STAMP_WANTED),locked)
	$(PY) -m pip install --quiet -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	$(VENV)/bin/earlytom-eval env --lock-only
else
	$(PY) -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]"
endif
	echo $(STAMP_WANTED) > $@

# Regenerate the lock from setup.cfg (+ lock-constraints.txt, the lock policy) for Python 3.11 on x86_64 Linux.
lock: install
	$(VENV)/bin/uv pip compile setup.cfg --extra dev -c lock-constraints.txt --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --annotation-style line --custom-compile-command "make lock" -o $(LOCK)

FORCE:

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check earlytom_eval tests

# lmms-eval exits 0 even when a run fails, so `smoke-check` verifies the output files of every run.
smoke: install
	$(VENV)/bin/earlytom-eval env --lmms-only
	$(VENV)/bin/earlytom-eval checkpoint --preset tiny --out $(SMOKE_OUT)/tiny-ov
	$(VENV)/bin/earlytom-eval smoke-data --out $(SMOKE_DATA)
	@set -e; for cfg in $(SMOKE_CONFIGS); do \
	  echo "== lmms-eval earlytom_smoke with configs/$$cfg.yaml -> $(SMOKE_OUT)/runs/$$cfg"; \
	  rm -rf "$(SMOKE_OUT)/runs/$$cfg"; \
	  EARLYTOM_SMOKE_DIR="$(abspath $(SMOKE_DATA))" $(VENV)/bin/lmms-eval --model earlytom_llava_ov \
	    --model_args pretrained=$(SMOKE_OUT)/tiny-ov,config=configs/$$cfg.yaml,max_frames_num=$(SMOKE_FRAMES),device=cpu,dtype=float32 \
	    --tasks earlytom_smoke --include_path tasks --batch_size 1 --log_samples \
	    --output_path $(SMOKE_OUT)/runs/$$cfg > "$(SMOKE_OUT)/lmms-eval_$$cfg.log" 2>&1 \
	    || { tail -n 30 "$(SMOKE_OUT)/lmms-eval_$$cfg.log"; exit 1; }; \
	done
	$(VENV)/bin/earlytom-eval smoke-check --expect-docs 6 $(addprefix $(SMOKE_OUT)/runs/,$(SMOKE_CONFIGS))

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache

# `make reproduce-tables`: every grid cell without a complete result (lmms-eval + TTFT bench), then the tables
# and plots. GRID=configs/grids/smoke.yaml is the CPU version (minutes). FORCE=1 re-runs finished cells,
# GPUS=N sets the data-parallel processes, DRY_RUN=1 only plans; RUNS= / TABLES= change the folders.
GRID ?= configs/grids/paper.yaml
RUNS ?=
TABLES ?=
GPUS ?=
FORCE ?=
DRY_RUN ?=
REPRO_ARGS ?=
REPRO_FLAGS = --grid $(GRID) $(if $(RUNS),--runs $(RUNS)) $(if $(TABLES),--out $(TABLES)) $(if $(GPUS),--gpus $(GPUS)) \
  $(if $(filter 1 yes true,$(FORCE)),--force) $(if $(filter 1 yes true,$(DRY_RUN)),--dry-run) $(REPRO_ARGS)

.PHONY: reproduce-tables example-tables
reproduce-tables: install
	$(VENV)/bin/earlytom-eval reproduce $(strip $(REPRO_FLAGS))

# Refresh the committed example tables (results/tables/smoke/) from the CPU smoke grid: the one command
# that writes into a committed folder, on purpose.
example-tables: install
	$(VENV)/bin/earlytom-eval reproduce --grid configs/grids/smoke.yaml --out results/tables/smoke $(REPRO_ARGS)

# `make gpu-report` on a lent GPU (H100/H200; its own torch, transformers 4.5x or 5.x, no lmms-eval, no network):
# the 7B preset on GPU_CLIP, every config, SDPA and FlashAttention-2 -> results/bench/gpu-<device>.{json,md}.
# The GPU machine gets the working tree without ignored files: copy the clip into .gpu-carry/ and carry it (README).
# GPU_PY: the interpreter with the GPU machine's torch. GPU_ARGS=--dry-run checks the command on CPU (tiny preset).
GPU_CLIP ?= .gpu-carry/jobs.mp4
GPU_PY ?= python3
GPU_OUT ?= results/bench
GPU_ARGS ?=

.PHONY: gpu-report
gpu-report:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) -m earlytom_eval.cli gpu-report \
	  $(if $(filter --dry-run,$(GPU_ARGS)),,--video $(GPU_CLIP)) --out $(GPU_OUT) $(GPU_ARGS)
