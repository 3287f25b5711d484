"""Pieces the baselines share: the one training configuration of a per-configuration
method, provenance notes recorded with that configuration, and what the full-precision
references (full fine-tuning, LoRA on the unquantized base) have in common.

(Per-method options are the ``options_cls`` trait of each method, built by
``coalora.methods.Method.build_options`` from ``TrainSettings.method_options[name]``.)
"""

from __future__ import annotations

import dataclasses

from coalora.methods import Method, Serves
from coalora.quant import ModelQConfig, QuantConfig
from coalora.quant.targets import QuantTarget

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


class FullPrecisionMethod(Method):
    """A method that never quantizes: it trains and serves the unquantized base (by default
    plain LoRA on it, the base ``Method``'s trainable parts).

    Configurations play no part: one full-precision pass per step (not K identical ones),
    and the model under any configuration is the full-precision one. Its fixed configuration
    set is empty; configurations given to it anyway are recorded with the checkpoint and
    otherwise ignored (only checked against the model's matrices).
    """

    serves = Serves.FULL_PRECISION

    @classmethod
    def fixed_configs(cls, targets: list[QuantTarget]) -> list[ModelQConfig]:
        """No configuration: full precision."""
        return []

    def restore_full_precision(self) -> None:
        """Put the full-precision weights back if a configuration was applied before."""
        if self.qbase.current is not None:
            self.qbase.restore()

    def setup(self) -> dict:
        self.restore_full_precision()
        return super().setup()

    def configs_for_step(self, rng, k: int) -> list[None]:
        return [None]  # one full-precision pass per step, whatever K is

    def export(self, mqc: ModelQConfig | None, out_dir, base_model: str):
        """A standard peft adapter over the unquantized base (no ``qconfig.json``), whatever
        ``mqc`` is: the model under every configuration is the full-precision one."""
        self.prepare_eval(mqc)
        return super().export(None, out_dir, base_model)

    def activate(self, mqc: ModelQConfig | None) -> None:
        # Full precision under every configuration. Never qbase.restore() here: full
        # fine-tuning trains the base weights, which it would overwrite with the pretrained ones.
        if mqc is not None:
            mqc.check_targets(self.targets)
