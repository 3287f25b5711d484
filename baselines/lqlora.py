"""LQ-LoRA (Guo et al., ICLR 2024): per configuration, ``W ~ Q + L1 L2`` by alternating a
randomized rank-r SVD and quantization under the configuration, LoRA initialised from
``L1, L2`` (``B = L1``, ``A = L2 / scaling``) and fine-tuned on the quantized residual base.

Options (``LQLoRAOptions``): ``iters`` (LQ-LoRA's default 100, stopping early at the first
rise of the error; the official CoA-LoRA code ran 1), randomized SVD with ``oversampling``
extra columns (LQ-LoRA: ``torch.svd_lowrank``), and ``fisher_task``: a task whose diagonal
Fisher (coalora.budgets' recipe) weights the SVD by LQ-LoRA's row/column approximation.

Configurations come from the standard ILP (``--budget``) or a file (``--qconfig``). The ILP
uses the plain quantization costs ``||sqrt(F) (W - deq(quant(W)))||^2`` of ``coalora.quant.cost``,
not LQ-LoRA's decomposition costs ``||W - (Q + L1 L2)||^2``, which would need one
decomposition per matrix and option (432 per matrix).

Evaluated under another configuration ``c``, the base is ``deq(quant_c(W - L1 L2))`` with the
``L1 L2`` of the training decomposition (see ``baselines.lowrank``).
"""

from __future__ import annotations

from dataclasses import dataclass

from coalora.methods import register_method

from .lowrank import LowRankInitMethod, LowRankSplit, lq_decompose


@dataclass(frozen=True)
class LQLoRAOptions:
    iters: int = 100
    randomized: bool = True
    oversampling: int = 10
    fisher_task: str | None = None

    def __post_init__(self):
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"lqlora option 'iters' must be an integer >= 1, got {self.iters!r}")
        if (
            isinstance(self.oversampling, bool)
            or not isinstance(self.oversampling, int)
            or self.oversampling < 0
        ):
            raise ValueError(
                f"lqlora option 'oversampling' must be an integer >= 0, got {self.oversampling!r}"
            )


@register_method
class LQLoRA(LowRankInitMethod):
    name = "lqlora"
    options_cls = LQLoRAOptions

    def fisher_task(self) -> str | None:
        return self.options.fisher_task

    def decompose(self, index, name, weight, quantize, fisher) -> LowRankSplit:
        o = self.options
        return lq_decompose(
            weight,
            quantize,
            self.settings.r,
            o.iters,
            fisher=fisher,
            randomized=o.randomized,
            oversampling=o.oversampling,
            # One independent, reproducible random projection per matrix and iteration.
            seed=self.settings.seed * 1_000_003 + index * 10_007,
        )
