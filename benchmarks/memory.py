"""Bytes held per base parameter during a CoA-LoRA training step, per compute dtype (not a test).

For each model and each ``--dtype``, in a fresh process (so one dtype's memory never hides
in the other's figures), on the shared engine: load the model as the workflow does, build
CoA-LoRA on two uniform configurations (NF3 and NF4: no cost tables, the memory does not
depend on which configurations), run one warm-up step (both configurations enter the
dequantization cache, the optimizer allocates its state), reset the kernel's peak-RSS mark
(``/proc/self/clear_refs``), run measured steps and read the peak (``VmHWM``). ``at load``:
the peak before that reset (loading, the originals' copy, the warm-up step), in bytes per
base parameter.

Printed per run: the peak resident memory above the process's baseline (its RSS after the
imports, before the model is loaded) divided by the base's parameter count, and what is held
by part (the working weights, the originals ``QuantizedBase`` re-quantizes from, the
dequantization cache beyond the working weights (the configuration in use is the cache's own
tensors, so only the other cached entries cost more), the trained parameters with their gradients and AdamW state, and what
the step adds above the memory held when it starts; the rest is allocator slack). The step is
measured at the given tokens and again at twice the batch, so its growth splits into a part
proportional to the tokens (activations) and a fixed part (a configuration switch's
temporaries, gradients in flight). Then a projection to LLaMA-2-7B (6.74 B parameters, batch 4
x 256 tokens; ``projection``). The last line is ``bytes per base parameter: X`` (the first
model in the first dtype, at the given tokens).

    python benchmarks/memory.py                                   # SmolLM2 and Qwen2.5-1.5B shape
    python benchmarks/memory.py --model smollm2-135m --dtype bf16,fp32 --tokens 4x128
    python benchmarks/memory.py --model tiny-llama --steps 1      # a quick check
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

REPO = Path(__file__).resolve().parents[1]
PAPER_SHAPE = "qwen2.5-1.5b"
# LLaMA-2-7B: parameters and the shape the activations scale with (config.json).
LLAMA_7B = dict(params=6.74e9, layers=32, hidden=4096, intermediate=11008, vocab=32000)
PROJECTED_TOKENS = 4 * 256
GOAL_BYTES, GOAL_7B_GB = 4.5, 40.0


def rss_kib(key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (``/proc/self/status``)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1))


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def measure(args) -> dict:
    """One model, one dtype, in this process (the ``--child`` mode)."""
    import torch
    import transformers  # noqa: F401 - imported before the baseline, as the engine's are

    from coalora.data import load_task, make_batches
    from coalora.methods import get_method
    from coalora.models import load_model
    from coalora.quant import ModelQConfig, QuantConfig, QuantizedBase
    from coalora.runner import model_kind
    from coalora.train import TrainSettings, train

    torch.set_num_threads(args.threads)
    batch, length = (int(x) for x in args.tokens.split("x"))
    task = load_task(args.task, max_train=batch * (2 * args.steps + 4))
    baseline = rss_kib("VmRSS")
    loaded = load_model(
        args.model_ref, kind=model_kind(task.spec.kind), num_labels=task.spec.num_labels
    )
    params = sum(p.numel() for p in loaded.model.parameters())
    config = loaded.model.config
    shape = dict(
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
    )
    qbase = QuantizedBase(loaded.model)
    configs = [
        ModelQConfig.uniform(qbase.targets, QuantConfig(b, 8, "fp32", 64, 256), name=f"nf{b}")
        for b in (3, 4)
    ]
    settings = TrainSettings(
        steps=1, batch_size=batch, max_length=length, r=args.r, alpha=16, lr=1e-4,
        configs_per_step=2, compute_dtype=args.dtype,
    )  # fmt: skip
    method = get_method("coalora")(loaded, qbase, settings, configs)
    batches = make_batches(task, loaded.tokenizer, "train", batch, length)
    started = time.perf_counter()
    train(method, batches.batch, settings, progress=False)  # warm-up: caches, AdamW state
    warm_seconds = time.perf_counter() - started
    loading_peak = rss_kib("VmHWM")  # the peak through loading and the warm-up step

    def measured_steps(batches, settings):
        """(RSS held at the start, peak RSS during, the result, seconds per step) in KiB."""
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        held = rss_kib("VmRSS")
        started = time.perf_counter()
        result = train(method, batches.batch, settings, progress=False)
        return held, rss_kib("VmHWM"), result, (time.perf_counter() - started) / settings.steps

    measured = TrainSettings(**{**settings.__dict__, "steps": args.steps, "seed": 1})
    held, peak, result, step_seconds = measured_steps(batches, measured)
    # The same steps at twice the batch: what of the growth scales with the tokens.
    wide = TrainSettings(**{**measured.__dict__, "batch_size": 2 * batch, "seed": 2})
    wide_batches = make_batches(task, loaded.tokenizer, "train", 2 * batch, length)
    held_2x, peak_2x, _, _ = measured_steps(wide_batches, wide)

    model = method.model
    trained = [p for p in method.parameters() if p.requires_grad]
    working = [p for p in model.parameters() if not p.requires_grad]
    return {
        "params": params,
        "shape": shape,
        "targeted": sum(t.numel for t in qbase.targets),
        "dtype": result.dtype,
        "baseline_bytes": baseline * 1024,
        "held_bytes": (held - baseline) * 1024,
        "peak_bytes": (peak - baseline) * 1024,
        "loading_peak_bytes": (loading_peak - baseline) * 1024,
        "step_bytes": max(0, peak - held) * 1024,
        "step_bytes_2x": max(0, peak_2x - held_2x) * 1024,
        "working": tensor_bytes(working),
        "originals": tensor_bytes(qbase.base_weights.values()),
        "originals_dtypes": sorted({str(w.dtype) for w in qbase.base_weights.values()}),
        "cache": qbase.cached_bytes_beyond_model(),
        "cache_cap": qbase.cache_bytes,
        # a parameter, its gradient and AdamW's two moments, all fp32
        "trained": 4 * tensor_bytes(trained),
        "tokens": batch * length,
        "step_seconds": step_seconds,
        "warm_seconds": warm_seconds,
    }


def step_parts(row: dict) -> tuple[float, float]:
    """A step's growth above the memory held at its start, split from the two measured token
    counts: (bytes per token, fixed bytes). Growth that does not rise with the tokens is all
    fixed (a noisy second point never makes the token part negative)."""
    small, large = row["step_bytes"], row["step_bytes_2x"]
    per_token = max(0.0, (large - small) / row["tokens"])  # the second point has 2x tokens
    return per_token, max(0.0, small - per_token * row["tokens"])


def projection(row: dict) -> dict:
    """LLaMA-2-7B at batch 4 x 256 from one measured run: the per-parameter parts times its
    parameters, the cache beyond the working weights as it would fill (two configurations, at
    most its cap, the one in use shared with the model), and a step's growth: its token
    part scaled by tokens x layers x (hidden + intermediate), its fixed part by the largest
    matrix (hidden x intermediate, the unit a configuration switch re-quantizes), plus the
    logits. Allocator slack held from loading (RSS at the step's start beyond the parts) is
    not projected."""
    shape = row["shape"]
    per_param = (row["working"] + row["originals"] + row["trained"]) / row["params"]
    config = LLAMA_7B["params"] * (row["working"] / row["params"])  # one configuration's bytes
    cache = max(0.0, min(row["cache_cap"], 2 * config) - config)
    per_token, fixed = step_parts(row)
    width = LLAMA_7B["layers"] * (LLAMA_7B["hidden"] + LLAMA_7B["intermediate"])
    activations = (
        per_token
        * PROJECTED_TOKENS
        * width
        / (shape["layers"] * (shape["hidden"] + shape["intermediate"]))
    )
    matrix = (
        LLAMA_7B["hidden"] * LLAMA_7B["intermediate"] / (shape["hidden"] * shape["intermediate"])
    )
    logits = PROJECTED_TOKENS * LLAMA_7B["vocab"] * (2 + 4 + 4)  # bf16 out, fp32 copy, grad
    parts = {
        "weights and trained": per_param * LLAMA_7B["params"],
        "cache": cache,
        "activations": activations + logits,
        "step, fixed": fixed * matrix,
    }
    return {**parts, "total": sum(parts.values())}


def run_child(model_ref: str, label: str, dtype: str, args) -> dict:
    cmd = [
        sys.executable, __file__, "--child", "--model-ref", model_ref, "--dtype", dtype,
        "--task", args.task, "--tokens", args.tokens, "--steps", str(args.steps),
        "--r", str(args.r), "--threads", str(args.threads),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"memory.py: {label} in {dtype} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", action="append", help="smollm2-135m or a paper shape (default: both of "
        f"smollm2-135m and {PAPER_SHAPE}); repeatable",
    )  # fmt: skip
    parser.add_argument("--dtype", default="bf16,fp32", help="compute dtypes, comma-separated")
    parser.add_argument("--tokens", default="1x64", help="batch x sequence length")
    parser.add_argument("--steps", type=int, default=1, help="measured steps")
    parser.add_argument("--r", type=int, default=16, help="LoRA rank")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--task", default="bible-lm")
    parser.add_argument("--json", help="also write every measured row to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-ref", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.dtype = args.dtype.strip()
        print(json.dumps(measure(args)))
        return
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    from benchmarks.paper_shapes import SHAPES, build_model_dir
    from coalora.machine import bf16_matrix_units
    from coalora.precision import check_setting

    for d in dtypes:
        check_setting(d, "--dtype")
    models = args.model or ["smollm2-135m", PAPER_SHAPE]
    print(
        f"memory per base parameter during a CoA-LoRA step (K=2), "
        f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}; batch {args.tokens} tokens, r={args.r}, "
        f"{args.threads} threads; CPU bf16 matrix units: {bf16_matrix_units()}"
    )
    headline = None
    measured = []
    with tempfile.TemporaryDirectory(prefix="memory-") as tmp:
        for name in models:
            if name in SHAPES:
                import torch

                ref = str(build_model_dir(name, Path(tmp) / name, dtype=torch.bfloat16))
                label = f"{name} (paper shape, random bf16 weights, tiny vocabulary)"
            else:
                ref, label = name, name
            print(f"\n{label}")
            header = (
                f"{'dtype':<9} {'B/param':>8} {'peak':>10} {'at load':>8} {'working':>10} {'originals':>18} "
                f"{'cache':>10} {'trained':>9} {'step +':>10} {'s/step':>7} {'7B proj.':>9}"
            )
            print(header)
            print("-" * len(header))
            rows = {}
            for dtype in dtypes:
                row = run_child(ref, label, dtype, args)
                rows[dtype] = row
                measured.append({"model": name, **row})
                proj = projection(row)
                per = row["peak_bytes"] / row["params"]
                originals = f"{gib(row['originals'])} {'/'.join(d.removeprefix('torch.') for d in row['originals_dtypes'])}"
                print(
                    f"{row['dtype']:<9} {per:>8.2f} {gib(row['peak_bytes']):>10} "
                    f"{row['loading_peak_bytes'] / row['params']:>8.2f} "
                    f"{gib(row['working']):>10} {originals:>18} {gib(row['cache']):>10} "
                    f"{gib(row['trained']):>9} {gib(row['peak_bytes'] - row['held_bytes']):>10} "
                    f"{row['step_seconds']:>7.1f} "
                    f"{proj['total'] / 1e9:>7.1f}GB"
                )
                if headline is None:
                    headline = (name, row)
            first = rows[dtypes[0]]
            p = projection(first)
            print(
                f"LLaMA-2-7B projection ({first['dtype']}, batch 4 x 256): weights and trained "
                f"{p['weights and trained'] / 1e9:.1f} GB + cache {p['cache'] / 1e9:.1f} GB + "
                f"activations {p['activations'] / 1e9:.1f} GB + a step's fixed growth "
                f"{p['step, fixed'] / 1e9:.1f} GB = {p['total'] / 1e9:.1f} GB "
                f"(goal < {GOAL_7B_GB:.0f} GB: {'met' if p['total'] / 1e9 < GOAL_7B_GB else 'not met'})"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(measured, indent=1))
    name, row = headline
    per = row["peak_bytes"] / row["params"]
    print(
        f"\n{name} in {row['dtype']}: goal <= {GOAL_BYTES} bytes per base parameter: "
        f"{'met' if per <= GOAL_BYTES else 'not met'}"
    )
    print(f"bytes per base parameter: {per:.2f}")


if __name__ == "__main__":
    main()
