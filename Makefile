# earlytom-eval: everything runs from the virtual environment in .venv at the repo root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# `make smoke`: tiny random checkpoint + synthetic clips, then the real lmms-eval CLI on CPU with two configs.
SMOKE_OUT ?= results/smoke
SMOKE_DATA ?= results/smoke-data
SMOKE_CONFIGS ?= full earlytom_r0.10
SMOKE_FRAMES ?= 8

.PHONY: install test lint smoke clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check earlytom_eval tests

# lmms-eval exits 0 even when a run fails, so `smoke-check` verifies the output files of every run.
smoke: install
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

.PHONY: reproduce-tables
reproduce-tables: install
	$(VENV)/bin/earlytom-eval reproduce $(strip $(REPRO_FLAGS))
