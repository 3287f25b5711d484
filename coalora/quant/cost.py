"""Cost tables for the bit-allocation ILP (docs/method.md 2.2), the diagonal Fisher, and their cache.

``cost_table`` returns ``C[i, j] = || sqrt(F_i) * (W_i - deq(quant(W_i, ALL_OPTIONS[j]))) ||_F^2``
(``F = 1`` without Fisher weights) for every targeted matrix ``i`` and each of the 432 options
``j``, with exactly the quantizer of ``blockwise.py`` (its padding rule included). Evaluating
432 quantizers one by one repeats most of the work, so the table is built from shared parts:

* first-level scales ``s`` and the offset ``o = min(s)`` once per ``B0`` (whole matrix);
* the double-quantized scales ``s^`` once per ``(B0, B1, b0, d1)`` (108 scale settings), with
  ``blockwise.double_quantize_scales`` / ``dequantize_scales`` themselves;
* the normalised weights ``y = W / s^`` once per scale setting; all four ``b`` share them.
  The codebook boundaries of every ``b`` are merged into one sorted list, so a single
  bucketing of ``y`` into the merged *cells* gives the code of every ``b`` at once (each
  ``b``'s boundaries are a subset, so a cell lies inside one code of each ``b``; the result
  is exactly ``torch.bucketize(y, midpoints(levels_b))``). Per cell ``k`` we accumulate
  ``A_k = sum F*W*s^`` and ``B_k = sum F*s^2`` (float64, products of float32 values are exact),
  and for level ``l`` of the cell's code the error is
  ``sum F*W^2 - 2 sum_k l_k A_k + sum_k l_k^2 B_k`` (the expanded square).

The table is float64. It agrees with the direct ``quantize_dequantize`` error up to float
rounding: the direct path rounds ``l * s^`` to float32 before subtracting, this one does not.

Sampled estimate (``max_elements``): the flattened weight is cut into chunks of
``CHUNK = 16384`` weights, the least common multiple of every ``B0 * B1``, so each chunk is a
union of whole second-level groups under every option and its quantization does not depend on
any other chunk, except through the matrix-wide offset ``o = min(s)``, which is therefore always
computed from the whole matrix. ``k = ceil(max_elements / CHUNK)`` of the ``C`` chunks are drawn
without replacement (a fixed, per-matrix seed: reproducible) and the summed error of the
sample is multiplied by ``C / k``. Under simple random sampling every chunk is drawn with
probability ``k / C``, so this (Horvitz-Thompson) estimate is unbiased for the exact cost;
with no padded last chunk ``C / k = numel / sampled``. All 432 options of a matrix see the same
chunks, so the comparisons between options that the ILP makes are much more precise than the
absolute level of an entry.

On disk a table is ``<name>.safetensors`` (``costs`` [N, 432] float64, plus ``numels`` and
``option_bits``) and the JSON index ``<name>.json`` (module names in order, shapes, quantizer,
Fisher weighting, ``max_elements``, a hash of the base weights, a checksum of the table).
"""

from __future__ import annotations

import hashlib
import math
import os
import zlib
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..io import read_json, write_json, write_with
from .blockwise import dequantize_scales, double_quantize_scales, first_level_scales, pad_and_block
from .codebooks import QUANTIZERS, codebook, midpoints
from .config import ALL_OPTIONS, FIELD_CHOICES, QuantConfig
from .targets import QuantTarget

CHUNK = max(FIELD_CHOICES["B0"]) * max(FIELD_CHOICES["B1"])  # 16384 = lcm of every B0*B1
assert all(CHUNK % (qc.B0 * qc.B1) == 0 for qc in ALL_OPTIONS)
NUM_OPTIONS = len(ALL_OPTIONS)
# Weights processed at a time: bounds memory on big matrices and keeps arrays cache-sized.
_GROUP_CHUNKS = 16
INDEX_FORMAT = "coalora-cost-table"
INDEX_VERSION = 1


# --- one bucketing for every b ----------------------------------------------------------------
@dataclass(frozen=True)
class _CellGrid:
    """Bucketing of ``y`` into the merged boundaries of every ``b`` (exact, table-driven).

    ``torch.bucketize`` on 280 boundaries is a slow branchy binary search on CPU. Instead a
    uniform grid of ``M`` bins over [-1, 1] is laid down; each bin's window (the bin widened by
    a quarter bin on each side, which covers any rounding of the bin index) holds at most a
    few boundaries. ``cell = (#boundaries below the window) + (#window boundaries < y)`` is the
    exact count of boundaries ``< y``, i.e. ``bucketize(y, boundaries)``. Values beyond [-1, 1]
    land in the first/last bin, whose windows reach past every boundary.
    """

    boundaries: np.ndarray  # float32 [K], sorted, unique
    below: np.ndarray  # int32 [M]: boundaries below each bin's window
    window: np.ndarray  # float32 [W, M]: boundaries inside each window, +inf padded
    cell_levels: dict  # b -> float64 [K + 1]: the level of b's code in each cell

    @property
    def num_cells(self) -> int:
        return len(self.boundaries) + 1

    def cells(self, y: np.ndarray, work: _Workspace) -> np.ndarray:
        """Cell index (int32) of each value of ``y``, in ``work.cell``."""
        n = len(y)
        bins = len(self.below)
        position, index, cell = work.position[:n], work.index[:n], work.cell[:n]
        np.add(y, np.float32(1.0), out=position)
        np.multiply(position, np.float32(bins / 2), out=position)
        np.clip(position, 0, bins - 1, out=position)
        index[...] = position  # truncation = floor, the position being >= 0
        self.below.take(index, out=cell, mode="clip")
        for row in self.window:
            bound, above = work.bound[:n], work.above[:n]
            row.take(index, out=bound, mode="clip")
            np.less(bound, y, out=above)
            np.add(cell, above.view(np.int8), out=cell)
        return cell


class _Workspace:
    """Buffers reused across scale settings: fresh megabyte-sized arrays for every operation
    cost more in page faults than the arithmetic itself."""

    def __init__(self, size: int):
        self.y = np.empty(size, np.float32)
        self.position = np.empty(size, np.float32)
        self.index = np.empty(size, np.int32)
        self.cell = np.empty(size, np.int32)
        self.bound = np.empty(size, np.float32)
        self.above = np.empty(size, np.bool_)
        self.scale = np.empty(size, np.float64)
        self.product = np.empty(size, np.float64)


@cache
def _cell_grid(quantizer: str, bins: int = 65536) -> _CellGrid:
    per_b = {b: midpoints(codebook(b, quantizer)).numpy() for b in FIELD_CHOICES["b"]}
    boundaries = np.unique(np.concatenate(list(per_b.values()))).astype(np.float32)
    if boundaries[0] <= -1 or boundaries[-1] >= 1:
        raise ValueError(f"{quantizer!r} codebook boundaries must lie inside (-1, 1)")
    width = 2.0 / bins
    starts = -1.0 + (np.arange(bins) - 0.25) * width
    ends = -1.0 + (np.arange(bins) + 1.25) * width
    bounds64 = boundaries.astype(np.float64)
    below = np.searchsorted(bounds64, starts, side="left").astype(np.int32)
    upto = np.searchsorted(bounds64, ends, side="left")
    rows = int((upto - below).max())
    window = np.full((rows, bins), np.inf, dtype=np.float32)
    for r in range(rows):
        has = below + r < upto
        window[r, has] = boundaries[below[has] + r]
    # A cell (boundaries[k-1], boundaries[k]] lies inside one code of each b: that code is the
    # number of b's boundaries <= boundaries[k-1] (bucketize counts boundaries strictly < y).
    cell_levels = {}
    for b, mids in per_b.items():
        codes = np.concatenate([[0], np.searchsorted(mids, boundaries, side="right")])
        cell_levels[b] = codebook(b, quantizer).numpy().astype(np.float64)[codes]
    return _CellGrid(boundaries, below, window, cell_levels)


# --- the cost table ----------------------------------------------------------------------------
_SCALE_SETTINGS = sorted({(qc.B0, qc.B1, qc.b0, qc.d1) for qc in ALL_OPTIONS})
_OPTION_OF = {(qc.B0, qc.B1, qc.b0, qc.d1, qc.b): qc.index for qc in ALL_OPTIONS}


def sampled_chunks(name: str, numel: int, max_elements: int | None) -> np.ndarray:
    """Indices of the chunks evaluated for a matrix (all of them when exact), sorted."""
    total = math.ceil(numel / CHUNK)
    if max_elements is None or max_elements >= total * CHUNK:
        return np.arange(total)
    count = min(total, math.ceil(max_elements / CHUNK))
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return np.sort(rng.choice(total, size=count, replace=False))


def _real_in_sample(numel: int, chunks: np.ndarray) -> int:
    """Weights of the sampled chunks that are not padding (only the last chunk pads)."""
    total = math.ceil(numel / CHUNK)
    return len(chunks) * CHUNK - (total * CHUNK - numel) * int(chunks[-1] == total - 1)


def _check_inputs(base_weights, targets, fisher, quantizer, max_elements) -> None:
    if quantizer not in QUANTIZERS:
        raise ValueError(
            f"unknown quantizer {quantizer!r}; allowed values: {', '.join(QUANTIZERS)}"
        )
    if max_elements is not None and (
        isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1
    ):
        raise ValueError(f"max_elements must be a positive integer or None, got {max_elements!r}")
    if not targets:
        raise ValueError("cost_table needs at least one target matrix")
    for t in targets:
        for what, tensors in (("base weights", base_weights), ("Fisher", fisher)):
            if tensors is None:
                continue
            if t.name not in tensors:
                raise ValueError(f"{what} have no tensor for module {t.name!r}")
            if tuple(tensors[t.name].shape) != tuple(t.shape):
                raise ValueError(
                    f"{what} of {t.name!r} have shape {tuple(tensors[t.name].shape)}, "
                    f"the model's matrix is {tuple(t.shape)}"
                )


# pad_and_block under a configuration with B0 * B1 = CHUNK pads to a multiple of CHUNK: the
# quantizer's own zero padding, only longer. The extra blocks and groups are padding-only, which
# the quantizer leaves out of o = min(s) and never dequantizes, so real blocks are unaffected.
_CHUNK_LAYOUT = QuantConfig(4, 8, "fp32", 64, 256)


def _chunked(tensor: torch.Tensor) -> torch.Tensor:
    """Flattened float32 tensor zero-padded to a multiple of CHUNK."""
    blocks, _ = pad_and_block(tensor, _CHUNK_LAYOUT)
    return blocks.reshape(-1)


@contextmanager
def _one_torch_thread():
    """Run small torch ops on one thread. torch's rounding kernels (``round``, ``floor``) open
    a parallel region even for tiny tensors; on a busy machine each one then waits
    milliseconds for a second thread, which for 108 scale settings x N matrices adds minutes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sampled_scales(padded: torch.Tensor, numel: int, chunks: np.ndarray) -> dict:
    """Dequantized scales ``s^`` of the sampled blocks (float32 numpy), per scale setting.

    The offset ``o`` is the minimum over the real blocks of the whole matrix. The sample's
    scales are quantized behind one extra leading second-level group filled with ``o``, so
    that ``double_quantize_scales`` itself (which takes the minimum over its input) finds
    exactly the whole matrix's offset; the extra group is dropped afterwards.
    """
    chunk_index = torch.from_numpy(chunks)
    last_sampled = int(chunks[-1] == len(padded) // CHUNK - 1)
    out = {}
    for B0 in FIELD_CHOICES["B0"]:
        scales = first_level_scales(padded.view(-1, B0))
        real_blocks = -(-numel // B0)
        offset = scales[:real_blocks].min()
        sample = scales.view(-1, CHUNK // B0)[chunk_index].reshape(-1)
        # Padding-only blocks all lie in the matrix's last chunk, at the end of the sample.
        sample_real = len(sample) - (len(scales) - real_blocks) * last_sampled
        for B1 in FIELD_CHOICES["B1"]:
            grouped = torch.cat([offset.expand(B1), sample]).view(-1, B1)
            for b0 in FIELD_CHOICES["b0"]:
                for d1 in FIELD_CHOICES["d1"]:
                    qc = QuantConfig(2, b0, d1, B0, B1)
                    codes, second, _ = double_quantize_scales(grouped, B1 + sample_real, qc)
                    hat = dequantize_scales(codes, second, offset, b0).reshape(-1)[B1:]
                    out[(B0, B1, b0, d1)] = hat.numpy()
    return out


def _matrix_costs(
    name: str, weight: torch.Tensor, fisher: torch.Tensor | None, grid: _CellGrid, chunks, bar
) -> np.ndarray:
    """Costs [432] of one matrix: exact, or the estimate from the sampled ``chunks``."""
    numel = weight.numel()
    padded = _chunked(weight)
    if not np.isfinite(padded.numpy()).all():
        raise ValueError(f"base weight of {name!r} has non-finite values")
    total_chunks = len(padded) // CHUNK
    with _one_torch_thread():
        scales = _sampled_scales(padded, numel, chunks)
    x_all = padded.numpy().reshape(total_chunks, CHUNK)[chunks].reshape(-1)
    f_all = None
    if fisher is not None:
        f_all = _chunked(fisher).numpy()
        if not (f_all >= 0).all():
            raise ValueError(f"Fisher of {name!r} has negative or NaN values")
        f_all = f_all.reshape(total_chunks, CHUNK)[chunks].reshape(-1)
    real_in_sample = _real_in_sample(numel, chunks)  # padding only ever ends the sample

    costs = np.zeros(NUM_OPTIONS)
    group = _GROUP_CHUNKS * CHUNK
    work = _Workspace(min(len(x_all), group))
    for start in range(0, len(x_all), group):
        stop = min(start + group, len(x_all))
        real = min(stop, real_in_sample) - start
        x = x_all[start:stop]
        x64 = x[:real].astype(np.float64)
        f64 = None if f_all is None else f_all[start : start + real].astype(np.float64)
        fx64 = x64 if f64 is None else f64 * x64
        sum_fxx = float(np.dot(fx64, x64))
        for B0, B1, b0, d1 in _SCALE_SETTINGS:
            s = scales[(B0, B1, b0, d1)][start // B0 : stop // B0]
            # y = W / s^ exactly as blockwise.encode_blocks computes it (0 where s^ = 0).
            y = work.y[: stop - start].reshape(-1, B0)
            if (s > 0).all():
                np.divide(x.reshape(-1, B0), s[:, None], out=y)
            else:
                np.divide(x.reshape(-1, B0), np.where(s > 0, s, np.float32(1))[:, None], out=y)
                y[s <= 0] = 0.0
            cell = grid.cells(work.y[:real], work)
            # Per cell: A = sum F*W*s^ and B = sum F*s^2 (float64 products of float32: exact).
            work.scale[: stop - start].reshape(-1, B0)[...] = s[:, None]
            scale, product = work.scale[:real], work.product[:real]
            np.multiply(fx64, scale, out=product)
            sum_fxs = np.bincount(cell, weights=product, minlength=grid.num_cells)
            np.multiply(scale, scale, out=product)
            if f64 is not None:
                np.multiply(product, f64, out=product)
            sum_fss = np.bincount(cell, weights=product, minlength=grid.num_cells)
            for b, levels in grid.cell_levels.items():
                # sum F (W - l s^)^2 = sum F W^2 - 2 sum_k l_k A_k + sum_k l_k^2 B_k
                err = sum_fxx - 2.0 * np.dot(levels, sum_fxs) + np.dot(levels * levels, sum_fss)
                costs[_OPTION_OF[(B0, B1, b0, d1, b)]] += err
        if bar is not None:
            bar.update(real)
    # The expanded square can round a hair below an exact zero.
    return np.maximum(costs, 0.0) * (total_chunks / len(chunks))


def cost_table(
    base_weights: dict[str, torch.Tensor],
    targets: list[QuantTarget],
    quantizer: str = "nf",
    fisher: dict[str, torch.Tensor] | None = None,
    max_elements: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Quantization error of every target under every option: float64 ``[N, 432]``.

    ``base_weights`` maps target names to the full-precision weights (``QuantizedBase``
    holds them); ``fisher`` maps them to the diagonal Fisher (``fisher_diagonal``). With
    ``max_elements`` each matrix is estimated from about that many weights (see the module
    docstring); ``None`` computes it exactly.
    """
    _check_inputs(base_weights, targets, fisher, quantizer, max_elements)
    grid = _cell_grid(quantizer)
    plan = [sampled_chunks(t.name, t.numel, max_elements) for t in targets]
    evaluated = sum(_real_in_sample(t.numel, c) for c, t in zip(plan, targets, strict=True))
    table = np.zeros((len(targets), NUM_OPTIONS))
    with tqdm(
        total=evaluated,
        desc=f"cost table ({len(targets)} matrices x {NUM_OPTIONS} options)",
        unit="weight",
        unit_scale=True,
        disable=not progress,
    ) as bar:
        for i, (target, chunks) in enumerate(zip(targets, plan, strict=True)):
            weight = base_weights[target.name].detach().to("cpu", torch.float32)
            f = None if fisher is None else fisher[target.name].detach().to("cpu", torch.float32)
            table[i] = _matrix_costs(target.name, weight, f, grid, chunks, bar)
    return torch.from_numpy(table)


# --- diagonal empirical Fisher -----------------------------------------------------------------
def fisher_diagonal(
    model: nn.Module, batches: Iterable[dict], targets: list[QuantTarget]
) -> dict[str, torch.Tensor]:
    """Mean over calibration batches of the squared gradient of ``model(**batch).loss``.

    Batches are moved to the model's device. Returns float32 tensors (CPU) keyed by target
    name. The model runs in eval mode (no dropout: the same batches give the same Fisher); only the targeted weights get
    gradients, and the model's training mode and ``requires_grad`` flags are restored.
    """
    modules = dict(model.named_modules())
    missing = [t.name for t in targets if t.name not in modules]
    if missing:
        raise ValueError(f"model has no module {missing[0]!r} ({len(missing)} target(s) missing)")
    weights = [modules[t.name].weight for t in targets]
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    sums = [torch.zeros(w.shape, dtype=torch.float32) for w in weights]
    count = 0
    device = weights[0].device if weights else torch.device("cpu")
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        for batch in batches:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            loss = model(**batch).loss
            if loss is None:
                raise ValueError("calibration batch gave no loss: batches need 'labels'")
            grads = torch.autograd.grad(loss, weights)
            for total, grad in zip(sums, grads, strict=True):
                total.add_(grad.detach().to("cpu", torch.float32).square())
            count += 1
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    if count == 0:
        raise ValueError("fisher_diagonal needs at least one calibration batch")
    return {t.name: total / count for t, total in zip(targets, sums, strict=True)}


# --- cache on disk -----------------------------------------------------------------------------
@dataclass
class CostTable:
    """A cost table with what it was computed from."""

    costs: torch.Tensor  # float64 [N, 432]
    modules: list[str]
    shapes: list[tuple[int, ...]]
    quantizer: str = "nf"
    fisher_weighted: bool = False
    max_elements: int | None = None
    weights_hash: str | None = None
    # LQ-LoRA's allocation: costs of W - SVD_r(W) (``coalora.quant.lowrank``); None: of W.
    lowrank_rank: int | None = None


def hash_weights(base_weights: dict[str, torch.Tensor], targets: list[QuantTarget]) -> str:
    """SHA-256 of the targeted weights (names, shapes and float32 bytes, in target order)."""
    digest = hashlib.sha256()
    for t in targets:
        tensor = base_weights[t.name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{t.name}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _options_digest() -> str:
    return hashlib.sha256(";".join(map(str, ALL_OPTIONS)).encode()).hexdigest()[:16]


def _table_digest(costs: torch.Tensor) -> str:
    return hashlib.sha256(costs.contiguous().numpy().tobytes()).hexdigest()


def index_path(path: str | os.PathLike) -> Path:
    """The JSON index that goes with a ``.safetensors`` cost table."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"a cost table path must end in .safetensors, got {path}")
    return path.with_suffix(".json")


def save_cost_table(
    path: str | os.PathLike,
    costs: torch.Tensor,
    targets: list[QuantTarget],
    *,
    quantizer: str = "nf",
    fisher_weighted: bool = False,
    max_elements: int | None = None,
    weights_hash: str | None = None,
    lowrank_rank: int | None = None,
) -> None:
    """Write ``path`` (safetensors) and its JSON index atomically; the index is written last."""
    index = index_path(path)
    costs = torch.as_tensor(costs).detach().to("cpu", torch.float64).contiguous()
    if tuple(costs.shape) != (len(targets), NUM_OPTIONS):
        raise ValueError(
            f"cost table has shape {tuple(costs.shape)}, expected ({len(targets)}, {NUM_OPTIONS})"
        )
    tensors = {
        "costs": costs,
        "numels": torch.tensor([t.numel for t in targets], dtype=torch.int64),
        "option_bits": torch.tensor([qc.bits for qc in ALL_OPTIONS], dtype=torch.float64),
    }
    write_with(path, lambda tmp: save_file(tensors, str(tmp)), suffix=".safetensors")
    write_json(
        index,
        {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "table_file": Path(path).name,
            "table_sha256": _table_digest(costs),
            "options": NUM_OPTIONS,
            "options_digest": _options_digest(),
            "quantizer": quantizer,
            "fisher_weighted": bool(fisher_weighted),
            "max_elements": max_elements,
            "weights_hash": weights_hash,
            "lowrank_rank": lowrank_rank,
            "modules": [t.name for t in targets],
            "shapes": [list(t.shape) for t in targets],
            "numels": [t.numel for t in targets],
        },
    )


def load_cost_table(
    path: str | os.PathLike,
    targets: list[QuantTarget],
    *,
    quantizer: str | None = None,
    weights_hash: str | None = None,
    fisher_weighted: bool | None = None,
    max_elements: int | None | str = "any",
    lowrank_rank: int | None | str = "any",
) -> CostTable:
    """Read a table written by ``save_cost_table`` and check it fits ``targets``.

    Any mismatch (module names or shapes, option space, a table that does not match its
    index, a corrupt file, and, when given, the quantizer, weights hash, Fisher weighting or
    ``max_elements``; ``"any"`` accepts every ``max_elements``) is a one-line error naming
    the file.
    """
    path = Path(path)
    index_file = index_path(path)
    meta = read_json(index_file, "cost table index")
    required = ("format", "table_sha256", "options_digest", "quantizer", "modules", "shapes")
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise ValueError(f"{index_file} is not a cost table index (format {INDEX_FORMAT!r})")
    absent = [k for k in required if k not in meta]
    if absent:
        raise ValueError(f"cost table index {index_file} lacks {', '.join(absent)}")
    if meta["options_digest"] != _options_digest():
        raise ValueError(f"cost table {path} was built for a different option space")
    names = [t.name for t in targets]
    stored = list(meta["modules"])
    if stored != names:
        diff = next(
            (i for i, (a, b) in enumerate(zip(stored, names, strict=False)) if a != b),
            min(len(stored), len(names)),
        )
        got = stored[diff] if diff < len(stored) else "<end>"
        want = names[diff] if diff < len(names) else "<end>"
        raise ValueError(
            f"cost table {path} does not fit the model: {len(stored)} modules vs the model's "
            f"{len(names)}; first difference at #{diff}: {got!r} vs {want!r}"
        )
    for t, shape in zip(targets, meta["shapes"], strict=True):
        if tuple(shape) != tuple(t.shape):
            raise ValueError(
                f"cost table {path}: module {t.name!r} has shape {tuple(shape)}, "
                f"the model's is {tuple(t.shape)}"
            )
    if quantizer is not None and meta["quantizer"] != quantizer:
        raise ValueError(
            f"cost table {path} is for quantizer {meta['quantizer']!r}, not {quantizer!r}"
        )
    if weights_hash is not None and meta.get("weights_hash") != weights_hash:
        raise ValueError(f"cost table {path} was computed from different base weights")
    if fisher_weighted is not None and bool(meta.get("fisher_weighted")) != fisher_weighted:
        raise ValueError(
            f"cost table {path} is {'' if meta.get('fisher_weighted') else 'not '}"
            f"Fisher-weighted, expected {'' if fisher_weighted else 'not '}Fisher-weighted"
        )
    if max_elements != "any" and meta.get("max_elements") != max_elements:
        raise ValueError(
            f"cost table {path} has max_elements={meta.get('max_elements')}, "
            f"expected {max_elements}"
        )
    if lowrank_rank != "any" and meta.get("lowrank_rank") != lowrank_rank:
        raise ValueError(
            f"cost table {path} has lowrank_rank={meta.get('lowrank_rank')}, "
            f"expected {lowrank_rank}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"cost table not found: {path}")
    try:
        costs = load_file(str(path))["costs"]
    except (SafetensorError, KeyError, OSError) as err:
        raise ValueError(f"cost table {path} is unreadable: {str(err).splitlines()[0]}") from None
    if costs.dtype != torch.float64 or tuple(costs.shape) != (len(targets), NUM_OPTIONS):
        raise ValueError(
            f"cost table {path} holds {costs.dtype} {tuple(costs.shape)}, "
            f"expected float64 ({len(targets)}, {NUM_OPTIONS})"
        )
    if _table_digest(costs) != meta["table_sha256"]:
        raise ValueError(f"cost table {path} does not match its index {index_file} (checksum)")
    return CostTable(
        costs=costs,
        modules=stored,
        shapes=[tuple(s) for s in meta["shapes"]],
        quantizer=meta["quantizer"],
        fisher_weighted=bool(meta.get("fisher_weighted", False)),
        max_elements=meta.get("max_elements"),
        weights_hash=meta.get("weights_hash"),
        lowrank_rank=meta.get("lowrank_rank"),
    )
