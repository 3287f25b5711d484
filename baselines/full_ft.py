"""Full fine-tuning: the full-precision reference. Every weight trains (embeddings, norms and
heads included), nothing is quantized and there is no LoRA.

Configurations play no part (``common.FullPrecisionMethod``): one full-precision pass per
step, the full-precision model under any configuration, an empty fixed configuration set.
"""

from __future__ import annotations

from pathlib import Path

import torch

from coalora.export import write_adapter_manifest
from coalora.io import atomic_dir
from coalora.quant import ModelQConfig

from .common import FullPrecisionMethod


class FullFineTuning(FullPrecisionMethod):
    name = "full-ft"
    exports_adapter = False  # every weight trains: the model itself is the export

    def setup(self) -> dict:
        self.restore_full_precision()
        for p in self.model.parameters():
            p.requires_grad_(True)
        return {}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        # named_parameters() lists a tied weight once (safetensors refuses shared tensors).
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters()}

    @torch.no_grad()
    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(
                f"full-ft checkpoint does not fit the model: missing {missing[:2]}, unexpected {unexpected[:2]}"
            )
        for name, p in params.items():
            if tuple(state[name].shape) != tuple(p.shape):
                raise ValueError(
                    f"full-ft checkpoint key {name!r} has shape {tuple(state[name].shape)}, "
                    f"the model expects {tuple(p.shape)}"
                )
            p.copy_(state[name].to(device=p.device, dtype=p.dtype))

    def export(self, mqc: ModelQConfig | None, out_dir: str | Path, base_model: str) -> Path:
        """Not an adapter: the whole fine-tuned model and tokenizer (``save_pretrained``)."""
        self.prepare_eval(mqc)
        with atomic_dir(out_dir) as tmp:
            self.model.save_pretrained(str(tmp))
            self.loaded.tokenizer.save_pretrained(str(tmp))
            write_adapter_manifest(tmp, self.name, self.model, base_model)
        return Path(out_dir)

    @classmethod
    def load_exported(cls, model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
        """The saved model itself (``model`` only tells its class: causal LM or classifier)."""
        return type(model).from_pretrained(str(adapter_dir))
