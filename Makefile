# fer-edge: `make` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
TRAIN_VENV ?= .venv-train
EDGE_VENV ?= .venv-edge
DEFAULT_CONFIG := configs/train-default.yaml
CONFIG ?= $(DEFAULT_CONFIG)
# the runs `make convert` and `make evaluate` work on: RUN if given; else the runs CONFIG trains (for the
# default CONFIG its two students, not the 471M-MAC teacher), read from CONFIG by python -m train.runs
RUN ?=
RUNS ?= $(or $(RUN),$(if $(filter $(DEFAULT_CONFIG),$(CONFIG)),runs/default runs/fast))
# in a recipe: $$runs holds them; a CONFIG that cannot be read stops the recipe with its error line
LIST_RUNS = runs='$(RUNS)'; [ -n "$$runs" ] || runs=$$($(TRAIN_VENV)/bin/python -m train.runs '$(CONFIG)') || exit 2
# the run whose int8 model `make convert` ships to each tier's file (scored on PrivateTest then, and only
# then); any other run converts into runs/.../tflite/ as a candidate, scored on PublicTest only.
# MODEL_CARD.md says which config trains each shipped run.
SHIPPED_default := runs/default-cpu/default
SHIPPED_fast := runs/fast-refine/fast
SHIP_default := models/fer_int8.tflite
SHIP_fast := models/fer_fast_int8.tflite
# test-time augmentation built into a converted model: none (a mirrored pass would double the cost
# past the MAC budgets, MODEL_CARD.md); flip is available
TTA ?= none
# FORCE=1: let make convert replace a shipped model with one from an unfinished run or one that scores lower
# on PublicTest (refused otherwise)
FORCE ?=
DEMO_OUT ?= out/demo
PI ?=
# requirements-pi.lock: requirements-edge.txt resolved for the Pi (64-bit Raspberry Pi OS Bookworm: CPython
# 3.11.2 on aarch64, glibc 2.36) with NumPy held at apt's 1.24.2, every file hashed
UV ?= $(TRAIN_VENV)/bin/uv
PI_LOCK_COMMAND := $(UV) pip compile requirements-edge.txt -c deploy/pi-constraints.txt \
	--python-platform aarch64-manylinux_2_36 --python-version 3.11.2 --only-binary :all: --generate-hashes \
	--custom-compile-command "make pi-lock" -o requirements-pi.lock
export PYTHONPATH := $(CURDIR)
# quiet: no pip version notice, no TensorFlow C++ info/warning lines, no build-backend warnings from pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export TF_CPP_MIN_LOG_LEVEL := 2
PIP_QUIET := PYTHONWARNINGS=ignore

.DEFAULT_GOAL := help
.PHONY: help demo test test-edge soak data-check lint train train-seed convert evaluate bench bench-edge bench-privacy \
	docs clip deploy deploy-model pi-lock pi-check ha-check clean

help:  ## this list
	@echo "fer-edge: facial expression recognition trained here, run headless on a Raspberry Pi"
	@echo
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: CONFIG=$(CONFIG) RUN=$(RUN) FER2013_DIR=$${FER2013_DIR:-../shared/fer2013} PI=user@host"

$(TRAIN_VENV)/.installed: requirements-train.txt requirements-dev.txt edge/pyproject.toml
	$(PYTHON) -m venv $(TRAIN_VENV)
	$(PIP_QUIET) $(TRAIN_VENV)/bin/pip install -q --upgrade pip
	$(PIP_QUIET) $(TRAIN_VENV)/bin/pip install -q -r requirements-train.txt -r requirements-dev.txt
	$(PIP_QUIET) $(TRAIN_VENV)/bin/pip install -q --no-deps -e ./edge
	touch $@

$(EDGE_VENV)/.installed: requirements-edge.txt edge/pyproject.toml
	$(PYTHON) -m venv $(EDGE_VENV)
	$(PIP_QUIET) $(EDGE_VENV)/bin/pip install -q --upgrade pip
	$(PIP_QUIET) $(EDGE_VENV)/bin/pip install -q -r requirements-edge.txt
	$(PIP_QUIET) $(EDGE_VENV)/bin/pip install -q --no-deps -e ./edge
	touch $@

# the device venv plus pytest, for make test-edge
$(EDGE_VENV)/.tests-installed: $(EDGE_VENV)/.installed requirements-dev.txt
	$(PIP_QUIET) $(EDGE_VENV)/bin/pip install -q "$$(grep -E '^pytest' requirements-dev.txt | cut -d' ' -f1)"
	touch $@

demo: $(EDGE_VENV)/.installed  ## run fer-edge with the shipped model on the bundled clip (MP4 + events in out/demo)
	$(EDGE_VENV)/bin/fer-edge run --source assets/demo.mp4 --output $(DEMO_OUT)

test: data-check $(TRAIN_VENV)/.installed $(EDGE_VENV)/.installed lint  ## lint, then the whole suite (needs FER-2013: ../shared/fer2013 or FER2013_DIR)
	$(TRAIN_VENV)/bin/python -m pytest tests -q

soak: $(TRAIN_VENV)/.installed $(EDGE_VENV)/.installed  ## long fault runs: random SIGKILLs, model replaced mid-run, soak (SOAK_KILLS, SOAK_SECONDS)
	$(TRAIN_VENV)/bin/python -m pytest tests/test_soak.py -m soak -q -s

test-edge: $(EDGE_VENV)/.tests-installed  ## the device package's tests in .venv-edge: no TensorFlow, no FER-2013 (about a minute)
	$(EDGE_VENV)/bin/python -m pytest tests -q -m "not train and not slow and not soak"

data-check:
	@d="$${FER2013_DIR:-../shared/fer2013}"; \
	if [ ! -d "$$d/train" ] || [ ! -d "$$d/test" ]; then \
	  echo "make test needs FER-2013 in the Kaggle folder layout (train/<class>/*.jpg, test/<class>/*.jpg);" >&2; \
	  echo "not found at $$(realpath -m "$$d")$${FER2013_DIR:+ (FER2013_DIR)}. Point FER2013_DIR at yours:" \
	    "FER2013_DIR=~/data/fer2013 make test; or run the device tests alone: make test-edge" >&2; \
	  exit 2; \
	fi

lint: $(TRAIN_VENV)/.installed  ## ruff (lint and format) and mypy
	$(TRAIN_VENV)/bin/ruff check .
	$(TRAIN_VENV)/bin/ruff format --check .
	$(TRAIN_VENV)/bin/mypy

train: $(TRAIN_VENV)/.installed  ## train + evaluate (PublicTest) CONFIG into runs/<name> (resumes an interrupted run)
	$(TRAIN_VENV)/bin/python -m train --config $(CONFIG) --resume

train-seed: $(TRAIN_VENV)/.installed  ## the origin's CNN, for comparison
	$(MAKE) train CONFIG=configs/train-seed.yaml

convert: $(TRAIN_VENV)/.installed  ## TFLite variants of RUNS, checked against Keras; the shipped runs' int8 go to models/
	@set -e; $(LIST_RUNS); for run in $$runs; do \
	  case $$(realpath -ms "$$run") in "$(abspath $(SHIPPED_default))") ship=$(SHIP_default);; \
	    "$(abspath $(SHIPPED_fast))") ship=$(SHIP_fast);; *) ship=;; esac; \
	  $(TRAIN_VENV)/bin/python -m convert --run $$run --ship-as "$$ship" --tta $(TTA) $(if $(FORCE),--force); \
	done

evaluate: $(TRAIN_VENV)/.installed  ## (re)write the PublicTest reports of RUNS (PrivateTest: make convert, shipped runs only)
	@set -e; $(LIST_RUNS); $(TRAIN_VENV)/bin/python -m train.evaluate $$runs

bench: $(TRAIN_VENV)/.installed  ## the shipped models: accuracy, cost, ms per face, camera-like conditions -> bench/results-*
	$(TRAIN_VENV)/bin/python -m bench.models
	$(TRAIN_VENV)/bin/python -m bench.robustness

bench-edge: $(TRAIN_VENV)/.installed  ## fer-edge vs the origin's loop, one core -> bench/results-edge.md
	$(TRAIN_VENV)/bin/python -m bench.edge

bench-privacy: $(TRAIN_VENV)/.installed  ## faces privacy lets through sharp on real clips, one core -> bench/results-privacy.md
	$(TRAIN_VENV)/bin/python -m bench.privacy

docs:  ## copy bench/results-*.md and the device config reference into README, MODEL_CARD.md and docs/
	$(PYTHON) tools/sync_docs.py

clip: $(TRAIN_VENV)/.installed  ## rebuild assets/demo.mp4 from FER-2013 PrivateTest faces
	$(TRAIN_VENV)/bin/python tools/make_demo_clip.py

deploy:  ## install/upgrade on a Pi over ssh: make deploy PI=user@host
	@test -n "$(PI)" || { echo "usage: make deploy PI=user@host" >&2; exit 2; }
	deploy/deploy.sh $(PI)

deploy-model:  ## swap the model on a Pi atomically and restart: make deploy-model PI=user@host [MODEL=path.tflite]
	@test -n "$(PI)" || { echo "usage: make deploy-model PI=user@host" >&2; exit 2; }
	deploy/deploy-model.sh $(PI) $(if $(MODEL),--model $(MODEL))

pi-lock: $(TRAIN_VENV)/.installed  ## re-resolve requirements-pi.lock (uv; NumPy held at Bookworm's 1.24.2)
	$(PI_LOCK_COMMAND)

pi-check: $(EDGE_VENV)/.installed  ## the device side in an arm64 Bookworm userland (qemu; root): install, run, parity -> bench/results-pi.md
	bench/pi_check.sh

ha-check: $(EDGE_VENV)/.installed  ## fer-edge against a real Home Assistant (trixie userland; root) -> bench/results-ha.md
	bench/ha_check.sh

clean:  ## remove venvs, caches and outputs (keeps runs/ and models/)
	rm -rf $(TRAIN_VENV) $(EDGE_VENV) build edge/build edge/*.egg-info out .pytest_cache .ruff_cache
