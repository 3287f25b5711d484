"""Perplexity, GPTQ-style: fixed non-overlapping windows over the joined test text.

The test split's documents are joined into one token stream (``coalora.data.lm_token_ids``:
``"\\n\\n".join`` without special tokens), cut into ``n = len // window`` non-overlapping
windows of ``window`` tokens (the tail shorter than a window is dropped), and each window is
scored on its own: every token but the first is predicted from the tokens before it in the
same window. Perplexity is ``exp`` of the mean negative log-likelihood over all predicted
tokens, ``n * (window - 1)`` of them. (GPTQ's script multiplies each window's mean NLL by
``window`` instead of ``window - 1``; the difference is a weighting detail, identical when
every window has the same length, as here.) The window length and the number of windows are
reported next to the number, because perplexities measured with different windows differ.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..timing import mark

DEFAULT_WINDOW = 2048


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_nll: float
    window: int
    num_windows: int
    predicted_tokens: int
    total_tokens: int  # tokens in the joined text, before cutting windows
    dropped_tokens: int  # the tail shorter than a window, plus windows beyond ``max_windows``
    # Mean token NLL of each window, in order (the record's per-example outcomes).
    window_nll: tuple[float, ...] = ()

    def protocol(self) -> dict:
        """Everything but the perplexity and the per-window NLLs (metric and outcomes)."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("perplexity", "window_nll")}
        return {"style": "gptq, non-overlapping windows", **fields}


def max_positions(model: torch.nn.Module) -> int | None:
    """The longest input the model's position embeddings allow (None: no stated limit)."""
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def window_length(model: torch.nn.Module, window: int = DEFAULT_WINDOW) -> int:
    """``window`` capped at the model's maximum positions."""
    if not isinstance(window, int) or window < 2:
        raise ValueError(f"perplexity window must be an integer >= 2, got {window!r}")
    limit = max_positions(model)
    return min(window, limit) if limit else window


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    window: int,
    batch_size: int = 1,
    max_windows: int | None = None,
) -> PerplexityResult:
    """GPTQ-style perplexity of ``model`` on a 1-D token stream (see the module docstring).

    ``max_windows`` scores only the first windows (for speed); it is recorded in the result.
    """
    if token_ids.dim() != 1:
        raise ValueError(f"token_ids must be one stream (1-D), got shape {tuple(token_ids.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be >= 1 or None, got {max_windows}")
    n = len(token_ids) // window
    if n == 0:
        raise ValueError(
            f"the test text has {len(token_ids)} tokens, fewer than one window of {window}: "
            "use a smaller window"
        )
    if max_windows is not None:
        n = min(n, max_windows)
    windows = token_ids[: n * window].view(n, window)
    model.eval()
    device = next(model.parameters()).device
    window_sums = []
    for start in range(0, n, batch_size):
        mark("first_eval_batch", once=True)  # set-up benchmark (coalora.timing)
        ids = windows[start : start + batch_size].to(device)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # half-precision log-softmax loses digits
        # Position t predicts token t + 1 of the same window.
        nll = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            ids[:, 1:].reshape(-1),
            reduction="none",
        )
        window_sums += nll.view(len(ids), -1).sum(dim=1).double().tolist()
    predicted = n * (window - 1)
    mean_nll = math.fsum(window_sums) / predicted
    return PerplexityResult(
        perplexity=math.exp(mean_nll),
        mean_nll=mean_nll,
        window=window,
        num_windows=n,
        predicted_tokens=predicted,
        total_tokens=len(token_ids),
        dropped_tokens=len(token_ids) - n * window,
        window_nll=tuple(total / (window - 1) for total in window_sums),
    )
