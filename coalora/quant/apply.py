"""Applying a model-level configuration: targeted weights become their dequantized values.

``QuantizedBase`` keeps one in-memory copy of the full-precision weights of the targeted
matrices, so switching configurations never reloads the model from disk. Dequantized
weights are cached per (matrix, option) up to a byte budget, because training samples a
few configurations over and over.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

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
        # The full-precision originals, held once (fp32 for exact quantization).
        self.base_weights: dict[str, torch.Tensor] = {
            n: m.weight.detach().to(torch.float32).clone() for n, m in self.linears.items()
        }
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._cached_bytes = 0
        self.current: ModelQConfig | None = None

    def dequantized(self, name: str, qc, quantizer: str = "nf") -> torch.Tensor:
        key = (name, qc.index, quantizer)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        weight = quantize_dequantize(self.base_weights[name], qc, quantizer)
        size = weight.numel() * weight.element_size()
        if size <= self.cache_bytes:
            self._cache[key] = weight
            self._cached_bytes += size
            while self._cached_bytes > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.numel() * old.element_size()
        return weight

    @torch.no_grad()
    def apply(self, mqc: ModelQConfig) -> None:
        """Set every targeted weight to its dequantized value under ``mqc``."""
        mqc.check_targets(self.targets)
        for t in self.targets:
            linear = self.linears[t.name]
            deq = self.dequantized(t.name, mqc.modules[t.name], mqc.quantizer)
            linear.weight.data.copy_(deq.to(linear.weight.dtype))
        self.current = mqc

    @torch.no_grad()
    def restore(self) -> None:
        """Put the full-precision weights back."""
        for name, linear in self.linears.items():
            linear.weight.data.copy_(self.base_weights[name].to(linear.weight.dtype))
        self.current = None


@torch.no_grad()
def apply_qconfig(model: nn.Module, mqc: ModelQConfig) -> nn.Module:
    """One-shot: quantize ``model`` in place under ``mqc`` (no copy of the originals kept)."""
    targets = quantizable_targets(model)
    mqc.check_targets(targets)
    modules = dict(model.named_modules())
    for t in targets:
        weight = modules[t.name].weight
        deq = quantize_dequantize(weight.data.to(torch.float32), mqc.modules[t.name], mqc.quantizer)
        weight.data.copy_(deq.to(weight.dtype))
    return model
