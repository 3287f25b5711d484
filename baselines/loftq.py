"""LoftQ (Li et al., ICLR 2024): per configuration, LoRA initialised so that the quantized
base plus the adapter approximates the full-precision weight, by peft's ``loftq_init``
alternation: ``Q = quant(W)``, ``L = SVD_r(W - Q)``, then ``iters - 1`` more rounds of
``Q = quant(W - L)``, ``L = SVD_r(W - Q)`` (full SVD; peft's default is one round).

Which quantizer (option ``backend``):

* ``"coalora"`` (default): the configuration's own quantizer (``coalora.quant``), so the base
  is exactly the configuration's quantized weight (of ``W - L_prev`` after more than one
  round) and every method is compared on the same bits. This is LQ-LoRA's alternation in
  LoftQ's order, without Fisher weighting or early stopping.
* ``"peft"``: peft's own quantizer for LoftQ, bitsandbytes NF4 in blocks of 64 with
  *unquantized* fp32 absmax (``compress_statistics=False``): 4.5 bits per weight. It
  expresses no option of our space (all of them quantize the absmax), so it is accepted only
  for a uniform configuration with ``b = 4`` and ``B0 = 64``, whose scale fields it does not
  honour, and that configuration's avg bits understate the base's storage. Use it to
  reproduce peft numbers, not to compare at equal bits.

Why not call ``peft.utils.loftq_utils.loftq_init`` itself (what ``init_lora_weights="loftq"``
runs): in peft 0.21.2 it hard-codes a CUDA/XPU compute device (it cannot run on CPU), supports
only NF4 and bitsandbytes int8 (peft's own NF2 quantizer was removed in 0.20), and sets
``B = L``, ``A = R`` without the LoRA scaling, so the adapted weight is ``Q + (alpha/r) L R``,
not ``Q + L R``, unless ``alpha = r``. ``loftq_decompose`` is its loop step for step; with
``backend="peft"`` it gives the same ``Q, L, R`` (tests check it where CUDA is present), and
here ``A = R / scaling`` makes step 0 exact for any alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

from coalora.quant import ModelQConfig

from .common import check_trained_config, uniform_option
from .lowrank import LowRankInitMethod, LowRankSplit, loftq_decompose
from .qlora_bnb import bnb_nf4_dequantized

BACKENDS = ("coalora", "peft")


@dataclass(frozen=True)
class LoftQOptions:
    iters: int = 1
    backend: str = "coalora"

    def __post_init__(self):
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"loftq option 'iters' must be an integer >= 1, got {self.iters!r}")
        if self.backend not in BACKENDS:
            raise ValueError(
                f"loftq option 'backend' must be one of {BACKENDS}, got {self.backend!r}"
            )


class LoftQ(LowRankInitMethod):
    name = "loftq"
    options_cls = LoftQOptions

    def setup(self) -> dict:
        if self.options.backend == "peft":
            [mqc] = self.train_configs
            option = uniform_option(mqc)
            if option is None or option.b != 4 or option.B0 != 64 or mqc.quantizer != "nf":
                found = "mixed options" if option is None else f"{mqc.quantizer} {option}"
                raise ValueError(
                    "loftq backend 'peft' quantizes with bitsandbytes NF4 in blocks of 64: it needs "
                    f"a uniform nf configuration with b=4 and B0=64, got {found}; use backend 'coalora'"
                )
        return super().setup()

    def quantize(self, weight, qc, quantizer):
        if self.options.backend == "peft":
            return bnb_nf4_dequantized(weight, double_quant=False)
        return super().quantize(weight, qc, quantizer)

    def decompose(self, index, name, weight, quantize, fisher) -> LowRankSplit:
        return loftq_decompose(weight, quantize, self.settings.r, self.options.iters)

    def activate(self, mqc: ModelQConfig) -> None:
        if self.options.backend == "peft":
            # bitsandbytes ignores every field but b and B0: only the trained base is defined.
            check_trained_config(self.name, self.train_configs[0], mqc)
        super().activate(mqc)
