"""Seconds per optimizer step: CoA-LoRA with K configurations per step against QLoRA (not a test).

Side by side in one run, on the shared engine (``coalora.train.train``, search off:
``epoch_steps=0``), after warm-up steps:

- the steady-state seconds per step of CoA-LoRA (``configs_per_step`` = K, default 2, the
  paper's) and of QLoRA (one configuration per step), and CoA-LoRA's ratio to the floor
  K x QLoRA's step (K forward/backward passes cannot cost less than K QLoRA steps);
- the share of each part of a step: switching the base to a configuration
  (``QuantizedBase.apply``, from its dequantization cache, which every training
  configuration has entered before the measured steps, as it has in training after each
  configuration's first use), the mapper (``CoALoRA.set_config``: the mixing matrices of one
  configuration), forward, backward (the mapper's backward included), the optimizer
  (gradient clipping + AdamW) and the rest (batch, engine bookkeeping);
- one end-of-epoch search round (``CoALoRAMethod.end_of_epoch``, the preset's search
  settings) amortised over the preset's epoch (``epoch_steps``).

Parts are timed inside the same steps (marks at each part's boundaries, each after
``torch.cuda.synchronize()`` on CUDA); CoA-LoRA and QLoRA run in alternating blocks
(ABBA) so load noise hits both alike; every figure is a median over the measured steps.
Training settings (r, alpha, lr, budgets, quantizer, search) come from an experiment of
``config/overnight.yaml``, the preset with both embedded models (the one on ``--model``, else
``minilm-testament``).

    python benchmarks/step_cost.py                          # MiniLM-L6, bible-testament, CPU
    python benchmarks/step_cost.py --model tiny-bert --steps 4 --warmup 1
    python benchmarks/step_cost.py --dtype bf16,fp32                # both dtypes, side by side
    python benchmarks/step_cost.py --device cuda --paper-shape roberta-large --batch-size 4 --max-length 256 --r 64
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Run as a script, this file's directory comes first on sys.path: look in the repository.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

import coalora.quant.apply as quant_apply  # noqa: E402
from coalora import precision  # noqa: E402
from coalora.budgets import AllocationSpec  # noqa: E402
from coalora.data import load_task, make_batches  # noqa: E402
from coalora.methods import get_method  # noqa: E402
from coalora.models import MODELS, load_model  # noqa: E402
from coalora.quant import QuantizedBase  # noqa: E402
from coalora.runner import model_kind, training_configs  # noqa: E402
from coalora.train import TrainSettings, resolve_device, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "overnight.yaml"  # every embedded model's experiment
DEFAULT_EXPERIMENT = "minilm-testament"
GOAL = 1.1  # CoA-LoRA's step / (K x QLoRA's step), on CPU
PARTS = (
    ("apply", "switch base (QuantizedBase.apply)"),
    ("mapper", "mapper (mixing matrices)"),
    ("forward", "forward"),
    ("backward", "backward"),
    ("optimizer", "optimizer (clip + AdamW)"),
    ("other", "other (batch, engine)"),
)


def synchronizer(device: torch.device):
    """A function that waits for the device's queued work (a no-op off CUDA)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def preset(model: str, name: str | None) -> tuple[str, dict]:
    """(name, settings) of the ``CONFIG`` experiment that times are taken under."""
    config = yaml.safe_load(CONFIG.read_text())
    experiments = config["experiments"]
    if name is None:
        name = next((n for n, e in experiments.items() if e.get("model") == model), None)
        name = name or DEFAULT_EXPERIMENT
    if name not in experiments:
        raise SystemExit(f"step_cost.py: no experiment {name!r} in {CONFIG}")
    exp = experiments[name]
    return name, {
        "train": dict(exp.get("train", {})),
        "budgets": exp.get("coalora_budgets") or [2.5, 3.0, 3.5, 4.0],
        "qlora_budget": (exp.get("eval_budgets") or [3.0])[0],
        "quantizer": exp.get("quantizer", config.get("quantizer", "nf")),
        "max_train": exp.get("max_train"),
    }


class Timeline:
    """Time-stamped marks (``what`` opens a part, ``/what`` closes it), each after a sync."""

    def __init__(self, sync):
        self.sync = sync
        self.marks: list[tuple[str, float]] = []

    def mark(self, what: str) -> None:
        self.sync()
        self.marks.append((what, time.perf_counter()))

    def steps(self) -> list[dict]:
        """Seconds per part of each step ("step" marks open a step, "end" closes the last)."""
        out, opened = [], {}
        for k, (what, t) in enumerate(self.marks):
            if what in ("step", "end") and out:
                out[-1]["total"] = t - out[-1].pop("start")
            if what == "step":
                out.append({"start": t, **{part: 0.0 for part, _ in PARTS}})
            elif what.startswith("/"):
                out[-1][what[1:]] += t - opened.pop(what[1:])
                if what == "/forward":  # backward runs from here to the next mark
                    out[-1]["backward"] += self.marks[k + 1][1] - t
            elif what != "end":
                opened[what] = t
        for step in out:
            step["other"] = step["total"] - sum(step[p] for p, _ in PARTS if p != "other")
        return out


@contextlib.contextmanager
def instrumented(method, timeline: Timeline, counts: dict):
    """Mark the parts of the engine's steps on ``method`` (the real objects, wrapped)."""
    qbase, model = method.qbase, method.model
    apply, clip, quantize = (
        qbase.apply,
        torch.nn.utils.clip_grad_norm_,
        quant_apply.quantize_dequantize,
    )

    def timed_apply(mqc):
        timeline.mark("apply")
        apply(mqc)
        timeline.mark("/apply")

    def timed_clip(*args, **kwargs):
        timeline.mark("optimizer")
        return clip(*args, **kwargs)

    def counted_quantize(*args, **kwargs):  # called on a dequantization-cache miss only
        counts["misses"] += 1
        return quantize(*args, **kwargs)

    qbase.apply = timed_apply
    coa = getattr(method, "coa", None)
    if coa is not None:
        set_config = coa.set_config

        def timed_set_config(mqc):
            timeline.mark("mapper")
            out = set_config(mqc)
            timeline.mark("/mapper")
            return out

        coa.set_config = timed_set_config
    torch.nn.utils.clip_grad_norm_ = timed_clip
    quant_apply.quantize_dequantize = counted_quantize
    handles = [
        model.register_forward_pre_hook(lambda *_: timeline.mark("forward")),
        model.register_forward_hook(lambda *_: timeline.mark("/forward")),
        register_optimizer_step_post_hook(lambda *_: timeline.mark("/optimizer")),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        torch.nn.utils.clip_grad_norm_ = clip
        quant_apply.quantize_dequantize = quantize
        del qbase.apply  # back to the class's method
        if coa is not None:
            del coa.set_config


def run_block(method, batches, settings, offset: int, sync, counts) -> list[dict]:
    """``settings.steps`` engine steps on batches ``offset``.., timed part by part."""
    timeline = Timeline(sync)

    def batch_for_step(k):
        timeline.mark("step")
        return batches.batch(offset + k)

    with instrumented(method, timeline, counts):
        train(method, batch_for_step, settings, progress=False)
        timeline.mark("end")
    return timeline.steps()


def distinct_options(configs, targets) -> tuple[int, int]:
    """(distinct (matrix, option) pairs, their bytes as fp32 dequantized weights)."""
    pairs = {(t.name, mqc.modules[t.name].index, mqc.quantizer) for mqc in configs for t in targets}
    sizes = {t.name: t.numel for t in targets}
    return len(pairs), sum(sizes[name] * 4 for name, _, _ in pairs)


def median(values) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def linear_shapes(model) -> list[tuple[int, int]]:
    """(in, out) of every nn.Linear of the model (the base layers under LoRA included)."""
    return [
        (m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)
    ]


def gemm_rates(model, batch, dtype, device, sync, reps: int = 3) -> dict:
    """The achieved linear-layer FLOP/s of one training pass (forward + backward to the
    inputs: 4 x tokens x in x out per frozen linear) and the machine's own GEMM rate at the
    same shapes in ``dtype`` (``F.linear`` with the weight held in it, best of ``reps``)."""
    tokens = int(batch["input_ids"].numel())
    shapes = linear_shapes(model)
    seconds = 0.0
    for n_in, n_out in sorted(set(shapes)):
        x = torch.randn(tokens, n_in, device=device).to(dtype)
        w = torch.randn(n_out, n_in, device=device).to(dtype)
        torch.nn.functional.linear(x, w)  # warm-up (oneDNN primitive creation)
        best = float("inf")
        for _ in range(reps):
            sync()
            tick = time.perf_counter()
            torch.nn.functional.linear(x, w)
            sync()
            best = min(best, time.perf_counter() - tick)
        seconds += best * shapes.count((n_in, n_out))
    flops = 2.0 * tokens * sum(i * o for i, o in shapes)
    return {"pass_flops": 2 * flops, "peak": flops / seconds}


@torch.no_grad()
def eval_forward_seconds(method, batches, sync, n: int) -> float:
    """Median seconds of an evaluation forward pass (no autograd) of the adapted model."""
    model = method.prepare_eval(method.train_configs[0])
    times = []
    for k in range(max(2, n) + 1):
        batch = batches.batch(k)
        sync()
        tick = time.perf_counter()
        model(**batch)
        sync()
        times.append(time.perf_counter() - tick)
    return median(times[1:])  # the first one warms up


def compare_dtypes(summaries: dict, k: int) -> None:
    names = list(summaries)
    print(f"\n=== compute dtypes side by side ({', '.join(names)}) ===")
    header = f"{'':<38}" + "".join(f"{n:>12}" for n in names) + f"{'speed-up':>12}"
    print(header)
    print("-" * len(header))
    # bf16's speed-up over fp32 where both ran; else the first dtype's over the last's.
    fast, slow = ("bf16", "fp32") if {"bf16", "fp32"} <= set(names) else (names[0], names[-1])
    first, last = summaries[fast], summaries[slow]
    for key, text in (
        ("coalora", f"CoA-LoRA step (K={k}), s"),
        ("qlora", "QLoRA step, s"),
        ("eval", "evaluation forward (no grad), s"),
    ):
        values = "".join(f"{summaries[n][key]:>12.4f}" for n in names)
        print(f"{text:<38}{values}{last[key] / first[key]:>11.2f}x")
    ratios = "".join(f"{summaries[n]['ratio']:>12.2f}" for n in names)
    print(f"{'CoA-LoRA / floor (K x QLoRA)':<38}{ratios}")
    for n in names:
        g = summaries[n]["gemm"]
        achieved = g["pass_flops"] / summaries[n]["pass"]
        print(
            f"{n}: one training pass {achieved / 1e9:.1f} GFLOP/s of linear layers, against this "
            f"machine's {n} GEMM rate at the same shapes {g['peak'] / 1e9:.1f} GFLOP/s "
            f"({100 * achieved / g['peak']:.0f}%)"
        )
    print(
        f"speed-up = {slow} seconds / {fast} seconds (goals on a CPU with AMX-BF16: "
        f"training step >= 2x, evaluation >= 2.5x for bf16 over fp32)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6", help="a name of `coalora models`")
    parser.add_argument(
        "--paper-shape",
        help="a paper model with its real shape and random weights "
        "(benchmarks/paper_shapes.py: roberta-large, qwen2.5-1.5b, qwen2.5-3b, llama-2-7b)",
    )
    parser.add_argument("--layers", type=int, help="--paper-shape with fewer blocks (quick check)")
    parser.add_argument("--task", help="default: bible-testament (encoders), bible-lm (causal LMs)")
    parser.add_argument(
        "--experiment",
        help=f"{CONFIG.name} experiment (default: the model's, else {DEFAULT_EXPERIMENT})",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--k", type=int, default=2, help="CoA-LoRA's configurations per step")
    parser.add_argument("--r", type=int, help="LoRA rank (default: the experiment's)")
    parser.add_argument("--steps", type=int, default=8, help="measured steps per method")
    parser.add_argument("--block", type=int, default=2, help="steps per alternating block")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps per method first")
    parser.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        help="CoA-LoRA's training budgets (default: the experiment's coalora_budgets)",
    )
    parser.add_argument(
        "--qlora-budget",
        type=float,
        help="QLoRA's budget (default: the experiment's first eval budget)",
    )
    parser.add_argument(
        "--epoch-steps", type=int, help="steps per search round (default: the experiment's)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (the workflow's train rule: 1)"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--dtype",
        default="auto",
        help="compute dtypes, comma-separated (bf16, fp32, auto), measured one after the other",
    )
    parser.add_argument(
        "--max-elements", type=int, default=65536, help="cost-table sampling per matrix"
    )
    args = parser.parse_args()  # fmt: skip
    args.dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    for dtype in args.dtypes:
        if dtype not in precision.SETTINGS:
            parser.error(f"--dtype: each of {', '.join(precision.SETTINGS)}, got {dtype!r}")
    for name in ("batch_size", "max_length", "k", "steps", "block", "max_elements"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        device = resolve_device(args.device)
    except ValueError:
        sys.exit("step_cost.py: --device cuda: no CUDA GPU is available on this machine")
    torch.set_num_threads(args.threads)
    transformers_logging.disable_progress_bar()
    sync = synchronizer(device)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="step-cost-") as tmp:
        if args.paper_shape:
            from benchmarks.paper_shapes import SHAPES, build_model_dir, task_of

            if args.paper_shape not in SHAPES:
                parser.error(f"--paper-shape: one of {', '.join(SHAPES)}")
            model_ref = str(
                build_model_dir(args.paper_shape, Path(tmp) / "model", layers=args.layers)
            )
            label = f"{args.paper_shape} (paper shape, random weights"
            label += f", {args.layers} block(s))" if args.layers else ")"
            default_task = task_of(args.paper_shape)
            exp_name, exp = preset(args.paper_shape, args.experiment)
        else:
            if args.model not in MODELS:
                parser.error(f"--model: one of {', '.join(MODELS)} (or --paper-shape)")
            model_ref = label = args.model
            encoder = MODELS[args.model].family == "encoder"
            default_task = "bible-testament" if encoder else "bible-lm"
            exp_name, exp = preset(args.model, args.experiment)
        if args.budgets:
            exp["budgets"] = args.budgets
        if args.qlora_budget is not None:
            exp["qlora_budget"] = args.qlora_budget
        run(args, model_ref, label, args.task or default_task, exp_name, exp, device, sync)
    print(f"\nwall time {time.perf_counter() - started:.0f} s")


def run(args, model_ref, label, task_name, exp_name, exp, device, sync) -> None:
    """Every ``--dtype`` in turn, then their comparison."""
    summaries = {}
    for dtype in args.dtypes:
        print(f"\n=== compute_dtype {dtype} ===")
        summaries[dtype] = run_dtype(
            args, model_ref, label, task_name, exp_name, exp, device, sync, dtype
        )
    if len(summaries) > 1:
        compare_dtypes(summaries, args.k)


def run_dtype(args, model_ref, label, task_name, exp_name, exp, device, sync, dtype) -> dict:
    """One compute dtype: the step table, the parts, the search round; returns its summary."""
    train_conf = exp["train"]
    epoch_steps = args.epoch_steps or train_conf.get("epoch_steps")
    base = TrainSettings.from_dict(
        {
            **{k: v for k, v in train_conf.items() if k not in ("batch_size", "max_length")},
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "configs_per_step": args.k,
            **({"r": args.r} if args.r else {}),
            "epoch_steps": 0,  # search off while steps are measured
            "device": args.device,
            "steps": args.block,
            "compute_dtype": dtype,
        }
    )
    spec = AllocationSpec(
        quantizer=exp["quantizer"], max_elements=args.max_elements, seed=base.seed
    )
    n_blocks = -(-args.steps // args.block)
    task = load_task(
        task_name, max_train=min(exp["max_train"] or 10**9, args.batch_size * 8 * (n_blocks + 2))
    )

    def build(name: str, **which):
        cls = get_method(name)
        loaded = load_model(
            model_ref, kind=model_kind(task.spec.kind), num_labels=task.spec.num_labels,
            seed=base.seed,
        )  # fmt: skip
        loaded.model.to(device)
        qbase = QuantizedBase(loaded.model)
        configs = training_configs(cls, loaded, qbase, allocation=spec, **which)
        method = cls(loaded, qbase, base, configs)
        # As the engine does at its start (it does again, to no effect): the cache fills in
        # the compute dtype from the first switch on.
        method.hold_in(precision.resolve(dtype, device))
        return method

    coa = build("coalora", budgets=exp["budgets"])
    qlora = build("qlora", budget=exp["qlora_budget"])
    batches = make_batches(task, coa.loaded.tokenizer, "train", base.batch_size, base.max_length)
    load = os.getloadavg()[0]
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"step cost: CoA-LoRA (K={args.k}) vs QLoRA, {datetime.datetime.now():%Y-%m-%d %H:%M:%S}")
    print(
        f"model {label}, task {task_name}, device {device}{gpu}, torch threads "
        f"{torch.get_num_threads()} (CPUs {os.cpu_count()}, load average {load:.2f})"
    )
    print(
        f"compute dtype {precision.record_name(coa.compute_dtype)} (--dtype {dtype}), "
        f"K={args.k}, batch {base.batch_size} x {base.max_length} tokens, r={base.r}, "
        f"alpha={base.alpha:g}; settings of experiment {exp_name} (config/{CONFIG.name}); "
        f"{args.steps} measured steps per method in blocks of {args.block} after {args.warmup} warm-up"
    )

    # Every training configuration enters the dequantization cache once (training does this
    # at each one's first use); the measured steps then switch from the cache.
    cold = []
    for method in (coa, qlora):
        for mqc in method.train_configs:
            sync()
            tick = time.perf_counter()
            method.qbase.apply(mqc)
            sync()
            cold.append(time.perf_counter() - tick)
    pairs, nbytes = distinct_options(coa.train_configs, coa.targets)
    fits = nbytes <= coa.qbase.cache_bytes
    print(
        f"CoA-LoRA training set: {len(coa.train_configs)} distinct configurations (ILP at "
        f"{', '.join(f'{b:g}' for b in exp['budgets'])} bits, max_elements {args.max_elements}) "
        f"over {len(coa.targets)} matrices: {pairs} distinct (matrix, option) pairs, "
        f"{nbytes / 2**20:.0f} MiB dequantized, cache {coa.qbase.cache_bytes / 2**20:.0f} MiB "
        f"({'all fit' if fits else 'they do NOT fit: steady state re-quantizes'}); "
        f"QLoRA: 1 configuration at {exp['qlora_budget']:g} bits"
    )
    print(
        f"first switch to a configuration (quantize + cache, once per configuration in a run): "
        f"median {median(cold):.3f} s"
    )

    rows = {"coalora": [], "qlora": []}
    block_medians = {"coalora": [], "qlora": []}
    counts = {"coalora": {"misses": 0}, "qlora": {"misses": 0}}
    methods = {"coalora": coa, "qlora": qlora}
    if args.warmup:
        for method in (coa, qlora):
            warm = dataclasses.replace(base, steps=args.warmup, seed=10**6)
            train(method, batches.batch, warm, progress=False)
    for b in range(n_blocks):
        order = ("coalora", "qlora") if b % 2 == 0 else ("qlora", "coalora")
        steps = min(args.block, args.steps - b * args.block)
        settings = dataclasses.replace(base, steps=steps, seed=b + 1)  # new configs per block
        for name in order:
            got = run_block(methods[name], batches, settings, b * args.block, sync, counts[name])
            rows[name] += got
            block_medians[name].append(median([s["total"] for s in got]))

    coa_step = median([s["total"] for s in rows["coalora"]])
    q_step = median([s["total"] for s in rows["qlora"]])
    floor = args.k * q_step
    ratio = coa_step / floor
    paired = [
        c / (args.k * q)
        for c, q in zip(block_medians["coalora"], block_medians["qlora"], strict=True)
    ]
    print()
    header = f"{'method':<20} {'configs/step':>12} {'s/step (median)':>16} {'min..max':>15} {'ratio to floor':>15}"
    print(header)
    print("-" * len(header))
    for name, k in (("coalora", args.k), ("qlora", 1)):
        totals = [s["total"] for s in rows[name]]
        shown = f"{ratio:.2f}" if name == "coalora" else "-"
        label_ = f"coalora (K={args.k})" if name == "coalora" else "qlora"
        print(
            f"{label_:<20} {k:>12} {median(totals):>16.4f} "
            f"{min(totals):>7.3f}..{max(totals):<7.3f} {shown:>15}"
        )
    print(f"{f'floor ({args.k} x qlora)':<20} {args.k:>12} {floor:>16.4f} {'':>15} {1.0:>15.2f}")
    print(
        f"ratio per block pair (coalora block median / {args.k} x qlora block median): "
        f"{' '.join(f'{r:.2f}' for r in paired)}; median {median(paired):.2f}"
    )

    print()
    header = f"{'part':<34} {'coalora s':>10} {'% of step':>10} {'per config':>11} {'qlora s':>10}"
    print(header)
    print("-" * len(header))
    for part, text in PARTS:
        c = median([s[part] for s in rows["coalora"]])
        q = median([s[part] for s in rows["qlora"]])
        per = f"{c / args.k:.4f}" if part in ("apply", "mapper", "forward", "backward") else ""
        print(f"{text:<34} {c:>10.4f} {100 * c / coa_step:>9.1f}% {per:>11} {q:>10.4f}")
    print(f"{'step (median)':<34} {coa_step:>10.4f} {100.0:>9.1f}% {'':>11} {q_step:>10.4f}")
    print(
        "(medians per step, so the parts need not add up to the step; the mapper's backward "
        "is in backward; QLoRA also switches its base, to its one configuration, every step)"
    )
    misses = {n: c["misses"] / len(rows[n]) for n, c in counts.items()}
    print(
        f"dequantization-cache misses per measured step: coalora {misses['coalora']:.1f}, "
        f"qlora {misses['qlora']:.1f}"
    )

    # One end-of-epoch search round, as the engine runs it (model in eval mode).
    search_line = "search round: not timed (the experiment sets no epoch_steps; give --epoch-steps)"
    amortised = 0.0
    if epoch_steps and base.search_mode != "frozen":
        held_out = make_batches(
            task, coa.loaded.tokenizer, "validation", base.batch_size, base.max_length
        )
        coa.attach_search([held_out.batch(k) for k in range(base.search_eval_batches)])
        pool = len(coa.train_configs)
        coa.model.eval()
        sync()
        tick = time.perf_counter()
        log = coa.end_of_epoch(epoch_steps)
        sync()
        seconds = time.perf_counter() - tick
        coa.model.train()
        amortised = seconds / epoch_steps
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in log["seconds"].items() if k != "total")
        search_line = (
            f"search round ({base.search_mode}, {base.search_candidates} candidates, pool of "
            f"{pool} re-evaluated on {base.search_eval_batches} held-out batches): {seconds:.1f} s "
            f"({parts}) / epoch of {epoch_steps} steps = {amortised:.4f} s/step "
            f"= {100 * amortised / coa_step:.1f}% of a CoA-LoRA step; with it, ratio to floor "
            f"{(coa_step + amortised) / floor:.2f}"
        )
    elif base.search_mode == "frozen":
        search_line = "search round: none (search_mode frozen)"
    print(search_line)
    print()
    verdict = "met" if ratio <= GOAL else "not met"
    where = "" if device.type == "cpu" else f" (this run is on {device.type}: the goal is for CPU)"
    print(
        f"goal on CPU: ratio <= {GOAL}: measured {ratio:.2f} (search off) -> {verdict}{where}; "
        "a measurement on this machine under its load, not a test"
    )
    passes = median([s["forward"] + s["backward"] for s in rows["coalora"]]) / args.k
    return {
        "dtype": coa.compute_dtype,
        "coalora": coa_step,
        "qlora": q_step,
        "ratio": ratio,
        "eval": eval_forward_seconds(coa, batches, sync, args.steps),
        "pass": passes,
        "gemm": gemm_rates(coa.model, batches.batch(0), coa.compute_dtype, device, sync),
    }


if __name__ == "__main__":
    main()
