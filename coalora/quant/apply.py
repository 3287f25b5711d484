"""Applying a model-level configuration: targeted weights become their dequantized values.

``QuantizedBase`` keeps one in-memory copy of the full-precision weights of the targeted
matrices, so switching configurations never reloads the model from disk. The copy is never
upcast: each matrix is held in the narrowest of bf16 / fp16 / its own dtype that holds its
values exactly (a bf16 checkpoint's weights stay bf16), and is quantized from fp32 one matrix
at a time, so the quantizer's numerics do not depend on how the copy is held. Dequantized
weights are cached per (matrix, option) in the dtype the model holds them (the compute
dtype, ``coalora.precision``) up to a byte budget, because training samples a few
configurations over and over. The model's targeted weights *are* those cached tensors (a
configuration is applied by pointing each weight at its entry, not by copying into it), so the
configuration in use is held once, not once in the model and again in the cache. Nothing
writes into a targeted weight in place: every writer here assigns a tensor of its own.

``QuantizedBase`` is the only writer of a model's targeted base weights: methods whose base
is not coalora's quantizer under a configuration (LQ-LoRA's residual, GPTQ's weights) hand
their weights to ``set_weights``, so ``current`` always says what the model holds.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..heap import release_freed_memory
from .blockwise import quantize_dequantize
from .model_config import ModelQConfig
from .targets import QuantTarget, quantizable_targets


class QuantizedBase:
    """A model whose targeted linear weights can be switched between configurations."""

    def __init__(self, model: nn.Module, cache_bytes: int = 2 * 1024**3):
        self.model = model
        self.targets: list[QuantTarget] = quantizable_targets(model)
        modules = dict(model.named_modules())
        self.linears: dict[str, nn.Linear] = {t.name: modules[t.name] for t in self.targets}
        # The full-precision originals, held once, exactly (``narrowest_exact``).
        self.base_weights: dict[str, torch.Tensor] = {
            n: narrowest_exact(m.weight.detach()) for n, m in self.linears.items()
        }
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._cached_bytes = 0
        self.misses = 0  # matrices quantized so far (cache misses)
        # What the targeted weights hold: None (full precision), the ModelQConfig last
        # applied, or the label given to ``set_weights``.
        self.current: ModelQConfig | str | None = None

    def dequantized(self, name: str, qc, quantizer: str = "nf") -> torch.Tensor:
        """Matrix ``name`` quantized under option ``qc`` and dequantized, in the dtype the
        model holds it in."""
        dtype = self.linears[name].weight.dtype
        key = (name, qc.index, quantizer, dtype)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        self.misses += 1
        # From fp32 (one matrix at a time): the same bits however the original is held.
        original = self.base_weights[name].to(torch.float32)
        weight = quantize_dequantize(original, qc, quantizer).to(dtype)
        size = weight.numel() * weight.element_size()
        if size <= self.cache_bytes:
            self._cache[key] = weight
            self._cached_bytes += size
            while self._cached_bytes > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.numel() * old.element_size()
        return weight

    def _point(self, name: str, weight: torch.Tensor) -> None:
        """Make ``weight`` the storage of matrix ``name`` (in the model's dtype for it)."""
        linear = self.linears[name]
        linear.weight.data = weight.to(linear.weight.dtype)

    def _write(self, weights: dict[str, torch.Tensor]) -> None:
        """Targeted weights from tensors the caller keeps: copied, so that neither the
        caller's tensors nor the originals ever alias the model."""
        for name, weight in weights.items():
            self._point(name, weight.to(self.linears[name].weight.dtype, copy=True))
        release_freed_memory()  # the replaced weights

    def apply(self, mqc: ModelQConfig) -> None:
        """Set every targeted weight to its dequantized value under ``mqc`` (the cache's own
        tensors: the configuration in use is held once)."""
        mqc.check_targets(self.targets)
        for t in self.targets:
            misses = self.misses
            self._point(t.name, self.dequantized(t.name, mqc.modules[t.name], mqc.quantizer))
            if self.misses > misses:
                # The quantizer's temporaries and the weight replaced are free heap now, which
                # glibc would keep (``coalora.heap``).
                release_freed_memory()
        self.current = mqc

    def cached_bytes_beyond_model(self) -> int:
        """Bytes of cached dequantized weights that the model does not currently hold: what
        the cache costs above the working weights."""
        held = {linear.weight.data_ptr() for linear in self.linears.values()}
        return sum(
            w.numel() * w.element_size() for w in self._cache.values() if w.data_ptr() not in held
        )

    def set_weights(self, weights: dict[str, torch.Tensor], label: str) -> None:
        """Write another base into targeted matrices (e.g. GPTQ's dequantized weights);
        ``label`` says what they are (``current``). Unknown or mis-shaped names fail."""
        for name, weight in weights.items():
            if name not in self.linears:
                raise ValueError(f"{label}: module {name!r} is not a quantized target of the model")
            if tuple(weight.shape) != tuple(self.linears[name].weight.shape):
                raise ValueError(
                    f"{label}: weight of {name!r} has shape {tuple(weight.shape)}, the model's "
                    f"is {tuple(self.linears[name].weight.shape)}"
                )
        self._write(weights)
        self.current = label

    def restore(self) -> None:
        """Put the full-precision weights back."""
        self._write(self.base_weights)
        self.current = None


def narrowest_exact(weight: torch.Tensor) -> torch.Tensor:
    """A copy of ``weight`` in the narrowest of bf16, fp16 and its own dtype that holds every
    value exactly (never wider than its own)."""
    for dtype in (torch.bfloat16, torch.float16):
        if weight.element_size() <= torch.finfo(dtype).bits // 8:
            break
        narrow = weight.to(dtype)
        if torch.equal(narrow.to(weight.dtype), weight):
            return narrow
    return weight.clone()


def apply_qconfig(model: nn.Module, mqc: ModelQConfig) -> nn.Module:
    """One-shot: quantize ``model`` in place under ``mqc`` (through a ``QuantizedBase``, whose
    full-precision copy is dropped afterwards)."""
    QuantizedBase(model, cache_bytes=0).apply(mqc)
    return model
