"""Speed of the quantizer, the cost table and the ILP, side by side with references (not a test).

1. Our NF4 quantize + dequantize (double-quantized scales: b0=8, fp32, B0=64, B1=256) against
   bitsandbytes' NF4 (``quantize_4bit(quant_type="nf4", blocksize=64, compress_statistics=True)``
   + ``dequantize_4bit``) on CPU, fp32, on matrices of SmolLM2-135M's shapes. Target <= 1.0.
2. The same against a plain copy of the matrix (``clone``). Target <= 3.0.
3. The exact cost table of one 1536 x 576 matrix against 432 direct ``quantize_dequantize``
   calls (information: how much the shared computation saves).
4. The ILP for SmolLM2's 210 matrices x 432 options at several budgets on a realistic cost table
   (the real weights when ``coalora.models.load_model("smollm2-135m")`` works, random weights of
   the real shapes otherwise; the table sampled with ``--max-elements``). Target < 5 s per solve.

Timings are medians of interleaved repeats (ours and the reference alternate, so that a burst
of load from other processes hits both). Usage::

    python benchmarks/quantize.py [--repeats 15] [--threads N] [--max-elements 32768] [--grid]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
QLORA_LIKE = (4, 8, "fp32", 64, 256)  # b, b0, d1, B0, B1: bitsandbytes' NF4 + nested statistics
SMOLLM2_LAYER = [  # the seven projections of one SmolLM2-135M layer (out, in)
    ("self_attn.q_proj", (576, 576)),
    ("self_attn.k_proj", (192, 576)),
    ("self_attn.v_proj", (192, 576)),
    ("self_attn.o_proj", (576, 576)),
    ("mlp.gate_proj", (1536, 576)),
    ("mlp.up_proj", (1536, 576)),
    ("mlp.down_proj", (576, 1536)),
]


def interleaved(functions, repeats: int) -> list[float]:
    """Median wall time of each function, calling them in turn ``repeats`` times."""
    for f in functions:  # warm-up (lazy initialisation, caches)
        f()
    times = [[] for _ in functions]
    for _ in range(repeats):
        for f, bucket in zip(functions, times, strict=True):
            start = time.perf_counter()
            f()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


class Table:
    def __init__(self):
        self.rows = []

    def add(self, name, ours, reference, target=None, note=""):
        ratio = ours / reference if reference else None
        verdict = "" if target is None else ("pass" if (ratio or ours) <= target else "FAIL")
        self.rows.append((name, ours, reference, ratio, target, verdict, note))

    def print(self):
        header = (
            f"{'measurement':<44} {'ours':>10} {'reference':>10} {'ratio':>7} {'target':>7}  result"
        )
        print(header)
        print("-" * len(header))
        for name, ours, reference, ratio, target, verdict, note in self.rows:
            ref = f"{reference * 1e3:8.2f}ms" if reference else f"{'-':>10}"
            if reference and reference >= 10:
                ref = f"{reference:9.2f}s"
            rat = f"{ratio:7.2f}" if ratio is not None else f"{'-':>7}"
            tgt = f"{target:7.2f}" if target is not None else f"{'-':>7}"
            ours_s = f"{ours * 1e3:8.2f}ms" if ours < 10 else f"{ours:9.2f}s"
            print(f"{name:<44} {ours_s:>10} {ref:>10} {rat} {tgt}  {verdict} {note}".rstrip())


def bench_quantizer(table: Table, repeats: int) -> None:
    from coalora.bnb import import_bitsandbytes
    from coalora.quant import QuantConfig, quantize_dequantize

    bnbf = import_bitsandbytes().functional

    qc = QuantConfig(*QLORA_LIKE)
    gen = torch.Generator().manual_seed(0)
    totals = [0.0, 0.0, 0.0]
    for shape in SHAPES:
        weight = torch.randn(*shape, generator=gen) * 0.02

        def ours(weight=weight):
            return quantize_dequantize(weight, qc)

        def bnb(weight=weight):
            packed, state = bnbf.quantize_4bit(
                weight, quant_type="nf4", blocksize=64, compress_statistics=True
            )
            return bnbf.dequantize_4bit(packed, state)

        def copy(weight=weight):
            return weight.clone()

        # Same format, so the errors must be alike (bnb quantizes absmax with its own 8-bit map).
        ours_err = (ours() - weight).pow(2).mean().item()
        bnb_err = (bnb() - weight).pow(2).mean().item()
        t_ours, t_bnb, t_copy = interleaved([ours, bnb, copy], repeats)
        totals = [a + b for a, b in zip(totals, (t_ours, t_bnb, t_copy), strict=True)]
        size = f"{shape[0]}x{shape[1]}"
        note = f"mse ours/bnb {ours_err / bnb_err:.3f}"
        table.add(f"NF4 q+dq {size}: ours vs bitsandbytes", t_ours, t_bnb, 1.0, note)
        table.add(f"NF4 q+dq {size}: ours vs plain copy", t_ours, t_copy, 3.0)
    table.add("NF4 q+dq all four: ours vs bitsandbytes", totals[0], totals[1], 1.0)
    table.add("NF4 q+dq all four: ours vs plain copy", totals[0], totals[2], 3.0)


def bench_cost_table_one_matrix(table: Table, repeats: int) -> None:
    from coalora.quant import ALL_OPTIONS, quantize_dequantize
    from coalora.quant.cost import cost_table
    from coalora.quant.targets import QuantTarget

    weight = torch.randn(1536, 576, generator=torch.Generator().manual_seed(1)) * 0.02
    target = [QuantTarget("w", "gate_proj", 0, (1536, 576))]

    def ours():
        return cost_table({"w": weight}, target, progress=False)

    def naive():
        return [
            (quantize_dequantize(weight, qc).double() - weight.double()).pow(2).sum()
            for qc in ALL_OPTIONS
        ]

    t_ours = interleaved([ours], 3)[0]
    start = time.perf_counter()  # the reference takes long: one run
    naive()
    t_naive = time.perf_counter() - start
    table.add("cost table 1536x576 exact: ours vs 432 q+dq", t_ours, t_naive, None)


def smollm2_weights():
    """(weights by target name, targets, source description)."""
    from coalora.quant.targets import QuantTarget, quantizable_targets

    try:
        from coalora.models import load_model

        model = load_model("smollm2-135m").model
        targets = quantizable_targets(model)
        modules = dict(model.named_modules())
        weights = {t.name: modules[t.name].weight.detach().float() for t in targets}
        return weights, targets, "real SmolLM2-135M weights (Q4_1 GGUF, dequantized)"
    except Exception as err:  # noqa: BLE001 - any failure: fall back to random weights
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    gen = torch.Generator().manual_seed(0)
    weights, targets = {}, []
    for layer in range(30):
        for suffix, shape in SMOLLM2_LAYER:
            name = f"model.layers.{layer}.{suffix}"
            kind = suffix.split(".")[1]
            targets.append(QuantTarget(name, kind, layer, shape))
            weights[name] = torch.randn(*shape, generator=gen) * 0.02
    return weights, targets, f"random weights of the real 210 shapes (load_model failed: {reason})"


def bench_ilp(table: Table, max_elements: int, budgets: list[float], grid: bool) -> None:
    from coalora.quant.allocate import allocate, allocate_grid, budget_grid
    from coalora.quant.cost import cost_table

    weights, targets, source = smollm2_weights()
    print(f"ILP cost table from {source}", file=sys.stderr)
    start = time.perf_counter()
    costs = cost_table(weights, targets, max_elements=max_elements, progress=True)
    elapsed = time.perf_counter() - start
    evaluated = sum(min(t.numel, max_elements) for t in targets)
    table.add(
        f"cost table {len(targets)}x432, max_elements={max_elements}",
        elapsed,
        None,
        note=f"{evaluated / 1e6:.1f}M of {sum(t.numel for t in targets) / 1e6:.1f}M weights",
    )
    solves = []
    for budget in budgets:
        start = time.perf_counter()
        mqc = allocate(targets, costs, budget)
        solves.append(time.perf_counter() - start)
        assert mqc.avg_bits <= budget
        table.add(
            f"ILP {len(targets)}x432, budget {budget}",
            solves[-1],
            None,
            5.0,
            f"avg bits {mqc.avg_bits:.4f}",
        )
    table.add(f"ILP {len(targets)}x432, slowest of {len(budgets)}", max(solves), None, 5.0)
    if grid:
        budgets = budget_grid(2.25, 7.25, 0.05, keep_every=2)
        start = time.perf_counter()
        configs = allocate_grid(targets, costs, budgets)
        table.add(
            f"ILP paper grid ({len(budgets)} budgets), total",
            time.perf_counter() - start,
            None,
            note=f"{len(configs)} distinct configurations",
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--max-elements", type=int, default=32768)
    parser.add_argument("--budgets", type=float, nargs="*", default=[2.25, 3.05, 4.127, 5.25, 7.15])
    parser.add_argument("--skip-ilp", action="store_true")
    parser.add_argument("--grid", action="store_true", help="also time the paper's 50 budgets")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {load:.2f} (other processes share these CPUs: compare ratios, not times)"
    )
    table = Table()
    bench_quantizer(table, args.repeats)
    bench_cost_table_one_matrix(table, args.repeats)
    if not args.skip_ilp:
        bench_ilp(table, args.max_elements, args.budgets, args.grid)
    table.print()


if __name__ == "__main__":
    main()
