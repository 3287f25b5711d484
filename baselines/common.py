"""Pieces the baselines share: the one training configuration of a per-configuration
method, and provenance notes recorded with that configuration.

(Per-method options are the ``options_cls`` trait of each method, built by
``coalora.methods.Method.build_options`` from ``TrainSettings.method_options[name]``.)
"""

from __future__ import annotations

import dataclasses

from coalora.quant import ModelQConfig, QuantConfig

# Key under which a per-configuration baseline records how it realised its configuration
# (library settings, iterations, seconds) in that configuration's JSON (``ModelQConfig.extra``),
# which the runner saves with the checkpoint as ``train_configs.json``.
PROVENANCE_KEY = "baseline"


def uniform_option(mqc: ModelQConfig) -> QuantConfig | None:
    """The option every matrix of ``mqc`` uses, or None when they differ."""
    options = set(mqc.modules.values())
    return options.pop() if len(options) == 1 else None


def check_trained_config(method_name: str, trained: ModelQConfig, asked: ModelQConfig) -> None:
    """One-line error unless ``asked`` is the configuration the method's base was built for."""
    if asked is None or asked.key() != trained.key():
        got = "no configuration" if asked is None else f"avg bits {asked.avg_bits:.4f}"
        raise ValueError(
            f"method {method_name!r} built its quantized base for its training configuration "
            f"(avg bits {trained.avg_bits:.4f}) and cannot switch to another ({got}): "
            "train one run per configuration"
        )


def with_provenance(mqc: ModelQConfig, info: dict) -> ModelQConfig:
    """A copy of ``mqc`` that carries ``info`` under ``PROVENANCE_KEY`` (same modules, same key)."""
    return dataclasses.replace(mqc, extra={**mqc.extra, PROVENANCE_KEY: info})
