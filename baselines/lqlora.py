"""LQ-LoRA (Guo et al., ICLR 2024): per configuration, ``W ~ Q + L1 L2`` by alternating a
randomized rank-r SVD and quantization under the configuration, LoRA initialised from
``L1, L2`` (``B = L1``, ``A = L2 / scaling``) and fine-tuned on the quantized residual base.

Options (``LQLoRAOptions``): ``iters`` (LQ-LoRA's default 100, stopping early at the first
rise of the error; the official CoA-LoRA code ran 1), randomized SVD with ``oversampling``
extra columns (LQ-LoRA: ``torch.svd_lowrank``), and ``fisher_task``: a task whose diagonal
Fisher (coalora.budgets' recipe) weights the SVD by LQ-LoRA's row/column approximation.

Configurations come from a file (``--qconfig``) or from the ILP over the decomposition's
costs (``--budget``): the quantization errors of ``W - L1 L2`` with ``L1 L2 = SVD_r(W)``, the
residual that LQ-LoRA quantizes after its first step (``coalora.quant.lowrank``; the workflow's
``cost_table_lowrank`` and ``allocate_<exp>_lqlora`` rules make the same files). LQ-LoRA's
own costs re-run the decomposition per matrix and option (432 decompositions per matrix); one
SVD per matrix keeps the allocation as cheap as the plain one. [decision]

Evaluated under another configuration ``c``, the base is ``deq(quant_c(W - L1 L2))`` with the
``L1 L2`` of the training decomposition (see ``baselines.lowrank``).
"""

from __future__ import annotations

from dataclasses import dataclass

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


class LQLoRA(LowRankInitMethod):
    name = "lqlora"
    options_cls = LQLoRAOptions
    own_allocation = True

    @classmethod
    def allocation_lowrank_rank(cls, settings) -> int | None:
        return settings.r

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
