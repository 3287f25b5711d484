"""Per-configuration set-up vs evaluation time on SmolLM2-135M (not a test).

One process, as ``coalora evaluate --qconfigs`` runs it: a CoA-LoRA checkpoint of SmolLM2-135M
(trained for one step, so that the adapter and the configuration-aware model are real) is
loaded once, then each configuration is switched in (set-up: quantize the base weights under
the configuration + compute its adapter, ``method.prepare_eval``) and evaluated (GPTQ-style
perplexity on the held-out Bible books + the embedded lm-eval tasks ``bible_ppl`` and
``bible_mc``). Printed per configuration: set-up seconds, evaluation seconds, their ratio
(target <= 0.1).

To stay within about five minutes the evaluation is limited (``--limit``: perplexity windows
and lm-eval documents per task). A limited evaluation is shorter than the real one, so the
verdict on the measured ratio is conservative; the ratio is also projected to the full test
sets from the measured time per window / document of each part (each part's time grows
linearly with its count, plus a fixed overhead the projection over-counts).

The configurations: uniform NF4 and NF3 (QLoRA-like double quantization), and a mixed one
(per-matrix bits 2/3/4 drawn with a fixed seed, block size 32 so that none of its matrices is
already in the dequantized-weight cache). SmolLM2's weights were Q4_1 (GGUF) before we quantize
them. Timings share the CPU with whatever else runs on the machine; by default torch uses ONE
thread, because on a busy 2-core machine two threads per process oversubscribe the cores and
ran up to 8x slower here (``--threads 2`` to use both).

Second table (``--forward``): each configuration's evaluation against the bare forward
passes it needs, measured side by side in the same process (target ratio <= 1.5). For the
default's encoder (MiniLM-L6 on Bible testament, 400 test examples in batches of 32 at
length 64, as config/config.yaml evaluates it) and SmolLM2's perplexity windows (12 of 256
tokens): "eval" is the driver's own ``eval_seconds`` (predictions, metrics, per-example
outcomes); "forward" times only ``model(**batch)`` over the very same batches (the split
tokenized once, grouped by length; the same windows), after the same configuration switch;
both after one warm-up pass of each configuration.
lm-eval tasks are not in this table (the default runs none).

Usage::

    python benchmarks/evaluate.py [--limit 3] [--threads 1] [--keep DIR]
    python benchmarks/evaluate.py --forward [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TARGET_RATIO = 0.1
TARGET_FORWARD_RATIO = 1.5
MODEL = "smollm2-135m"
TASK = "bible-lm"


def make_configs(targets, directory: Path) -> list[Path]:
    import numpy as np

    from coalora.quant import ModelQConfig, QuantConfig

    rng = np.random.default_rng(0)
    configs = [
        ModelQConfig.uniform(targets, QuantConfig(4, 8, "fp32", 64, 256), name="uniform-nf4"),
        ModelQConfig.uniform(targets, QuantConfig(3, 8, "fp32", 64, 256), name="uniform-nf3"),
        ModelQConfig.from_list(
            targets,
            # Block size 32: options the uniform ones did not already put in the cache.
            [QuantConfig(int(b), 8, "fp32", 32, 256) for b in rng.choice([2, 3, 4], len(targets))],
            name="mixed-2-3-4",
        ),
    ]
    paths = []
    for mqc in configs:
        mqc.model = MODEL
        paths.append(directory / f"{mqc.name}.json")
        mqc.save(paths[-1])
    return paths


def train_checkpoint(qconfig: Path, out: Path, model: str = MODEL, task: str = TASK) -> Path:
    from coalora.runner import run_training
    from coalora.train import TrainSettings

    settings = TrainSettings(steps=1, batch_size=1, max_length=64, r=16, configs_per_step=1)
    return run_training(
        model=model,
        task=task,
        method="coalora",
        settings=settings,
        out=out,
        qconfig=str(qconfig),
        max_train=8,
        progress=False,
    )


def projected_eval_seconds(record: dict) -> float:
    """Evaluation time scaled from the limited counts to the full test sets, part by part."""
    protocol = record["protocol"]
    ppl = protocol["perplexity"]
    full_windows = ppl["total_tokens"] // ppl["window"]
    seconds = ppl["seconds"] * full_windows / ppl["num_windows"]
    for info in protocol["lm_eval"]["tasks"].values():
        samples = info["n_samples"]
        seconds += info["seconds"] * samples["original"] / samples["effective"]
    return seconds


# (model, task, evaluation settings) of the forward-ratio table: the default's encoder and
# causal-LM evaluations (config/config.yaml).
FORWARD_CASES = (
    (
        "minilm-l6",
        "classification",
        "bible-testament",
        dict(batch_size=32, limit=400, max_length=64),
    ),
    ("smollm2-135m", "causal-lm", "bible-lm", dict(limit=12, window=256, lm_eval_tasks=[])),
)


def bare_forward_seconds(source, mqc, measure) -> float:
    """Seconds of only the forward passes the evaluation of ``mqc`` runs (same batches)."""
    import torch

    model = source.prepare(mqc)
    device = next(model.parameters()).device
    started = time.perf_counter()
    with torch.no_grad():
        if measure.kind == "classification":
            for _, batch in measure.batches.by_length():
                model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})
        else:
            s = measure.settings
            n = min(len(measure.token_ids) // measure.window, s.limit or 10**9)
            windows = measure.token_ids[: n * measure.window].view(n, measure.window)
            for start in range(0, n, s.ppl_batch_size):
                ids = windows[start : start + s.ppl_batch_size].to(device)
                model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return time.perf_counter() - started


def forward_table(work: Path) -> float:
    """Print eval vs bare-forward seconds per configuration; return the worst ratio."""
    from coalora.evaluate import EvalSettings, Trained, evaluate_configs

    # The driver's own task loading (the same stratified limit) and measure (the same
    # batches, tokenized once), used here to time only the forward passes of the very
    # evaluation the driver ran.
    from coalora.evaluate.measure import TaskMeasure, load_eval_task
    from coalora.models import load_model
    from coalora.quant import ModelQConfig, QuantConfig, quantizable_targets

    header = f"{'model':<14} {'configuration':<12} {'eval':>7} {'forward':>8} {'ratio':>6}  target"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for model, kind, task, options in FORWARD_CASES:
        targets = quantizable_targets(load_model(model, kind=kind, num_labels=2).model)
        paths = []
        for b in (3, 4):
            mqc = ModelQConfig.uniform(targets, QuantConfig(b, 8, "fp32", 64, 256), name=f"nf{b}")
            mqc.model = model
            paths.append(work / f"{model}-nf{b}.json")
            mqc.save(paths[-1])
        checkpoint = train_checkpoint(paths[0], work / f"{model}-checkpoint", model, task)
        settings = EvalSettings(**options)
        source = Trained(checkpoint)
        # Each configuration twice: the first pass warms the kernels for its shapes (as the
        # forward-only pass below would otherwise get for free); the second is compared.
        records = evaluate_configs(source, paths + paths, None, None, settings)[len(paths) :]
        task_data = load_eval_task(task, settings)
        measure = TaskMeasure(source.loaded, task_data, settings, settings.max_length or 64)
        for path, record in zip(paths, records, strict=True):
            mqc = ModelQConfig.load(path, source.qbase.targets)
            forward = bare_forward_seconds(source, mqc, measure)
            ratio = record["eval_seconds"] / forward
            worst = max(worst, ratio)
            print(
                f"{model:<14} {record['config_name']:<12} {record['eval_seconds']:6.2f}s "
                f"{forward:7.2f}s {ratio:6.2f}  {TARGET_FORWARD_RATIO:.1f} "
                f"{'met' if ratio <= TARGET_FORWARD_RATIO else 'NOT met'}"
            )
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=3, help="windows / documents per part")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--keep", type=Path, default=None, help="keep results in this directory")
    parser.add_argument(
        "--forward", action="store_true", help="the eval-vs-bare-forward table instead"
    )
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.forward:
        work = Path(args.keep or tempfile.mkdtemp(prefix="coalora-bench-forward-"))
        work.mkdir(parents=True, exist_ok=True)
        print(f"{time.strftime('%Y-%m-%d %H:%M')} threads {torch.get_num_threads()}")
        worst = forward_table(work)
        print(f"worst ratio {worst:.2f} (target <= {TARGET_FORWARD_RATIO}; a measurement)")
        return 0 if worst <= TARGET_FORWARD_RATIO else 1
    from coalora.evaluate import EvalSettings, Trained, evaluate_configs
    from coalora.models import load_model
    from coalora.quant import quantizable_targets

    work = Path(args.keep or tempfile.mkdtemp(prefix="coalora-bench-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    targets = quantizable_targets(load_model(MODEL).model)
    qconfigs = make_configs(targets, work)
    checkpoint = train_checkpoint(qconfigs[0], work / "checkpoint")
    prepared = time.perf_counter() - started
    print(f"{MODEL}: {len(targets)} matrices; checkpoint (1 step) ready in {prepared:.0f} s")

    settings = EvalSettings(limit=args.limit, batch_size=8)
    outs = [work / "results" / p.name for p in qconfigs]
    records = evaluate_configs(Trained(checkpoint), qconfigs, None, outs, settings)

    first = records[0]["protocol"]
    ppl, lm_eval = first["perplexity"], first["lm_eval"]
    print(
        f"one-time load (checkpoint + tasks): {first['load_seconds']:.1f} s; threads "
        f"{first['threads']}; limit {args.limit}: perplexity {ppl['num_windows']} x {ppl['window']}"
        f"-token windows (of {ppl['total_tokens'] // ppl['window']}), lm-eval "
        + ", ".join(
            f"{t} {i['n_samples']['effective']} docs (of {i['n_samples']['original']})"
            for t, i in lm_eval["tasks"].items()
        )
    )
    header = (
        f"{'configuration':<14} {'bits':>6} {'set-up':>8} {'eval':>8} {'ratio':>6} "
        f"{'full eval*':>10} {'ratio*':>7} {'target':>6}  result"
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    for record in records:
        setup, evaluation = record["setup_seconds"], record["eval_seconds"]
        projected = projected_eval_seconds(record)
        ratio, ratio_full = setup / evaluation, setup / projected
        worst = max(worst, ratio)
        verdict = "pass" if ratio <= TARGET_RATIO else "FAIL"
        print(
            f"{record['config_name']:<14} {record['avg_bits']:6.3f} {setup:7.2f}s {evaluation:7.1f}s "
            f"{ratio:6.3f} {projected:9.0f}s {ratio_full:7.3f} {TARGET_RATIO:6.2f}  {verdict}"
        )
    print(
        "* projected to the full test sets from the measured per-window / per-document times "
        "(information); the verdict uses the measured ratio of the limited run (conservative)."
    )
    print(f"total {time.perf_counter() - started:.0f} s; results in {work / 'results'}")
    return 0 if worst <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
