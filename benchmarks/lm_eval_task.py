"""Cost and accuracy of one whole embedded lm-eval task on SmolLM2-135M (not a test).

The bare base model (no adapter) is scored by lm-eval on every item of an embedded task
(``--task``, default ``bible_mc``; ``coalora.evaluate.lm_eval_tasks``) at full precision and
under uniform NF configurations, each as one ``LMEvalSuite.run`` (the call the evaluation
driver makes per configuration). Printed per configuration: items, the sequences HFLM passed
through the model per item (``rows/item``: one per scored continuation, unless lm-eval's
logits cache scores several one-token continuations of a shared context from one row), wall
and CPU seconds (the process's, which on a shared machine say more than the wall clock),
CPU seconds per item, acc and acc_norm (where the task has it), beside the chance level
(1 / number of choices). What it answers: how long the task takes per configuration
evaluated, and whether its accuracy separates configurations from chance and from each
other. SmolLM2's weights were Q4_1 (GGUF) before we quantize them.

Torch uses ONE thread by default (a job of the workflow gets one core); the seconds depend
on the machine's load: report it with them.

    HF_HUB_OFFLINE=1 python benchmarks/lm_eval_task.py [--task bible_cloze] [--configs fp,nf3]
        [--limit N] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

MODEL = "smollm2-135m"
# Configuration labels: full precision, or uniform NF-b double quantization (b, 8, fp32, 64, 256).
UNIFORM_BITS = {"nf2": 2, "nf3": 3, "nf4": 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="bible_mc", help="an embedded lm-eval task")
    parser.add_argument("--configs", default="fp,nf3", help="comma-separated: fp, nf2, nf3, nf4")
    parser.add_argument("--limit", type=int, default=None, help="items per task (default all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    labels = args.configs.split(",")
    unknown = [c for c in labels if c != "fp" and c not in UNIFORM_BITS]
    if unknown:
        parser.error(
            f"unknown configuration(s) {unknown}: choose from fp, {', '.join(UNIFORM_BITS)}"
        )

    import json

    import torch
    from lm_eval.models.huggingface import HFLM

    from coalora.evaluate.lm_eval_tasks import EMBEDDED_TASKS, LMEvalSuite, embedded_tasks_dir
    from coalora.models import load_model
    from coalora.quant import ModelQConfig, QuantConfig, QuantizedBase

    if args.task not in EMBEDDED_TASKS:
        parser.error(f"unknown task {args.task!r}: choose from {', '.join(EMBEDDED_TASKS)}")
    suite = LMEvalSuite([args.task], batch_size=args.batch_size)
    suite.prepare()  # task data built and loaded before any clock starts
    with (embedded_tasks_dir() / f"{args.task}.jsonl").open() as handle:
        first = json.loads(handle.readline())
    if "choices" not in first:
        parser.error(f"task {args.task!r} is not multiple choice (no accuracy to report)")
    chance = 1 / len(first["choices"])

    # Every model call of lm-eval's loglikelihood path goes through HFLM._model_call: count
    # the sequences (batch rows) it is given.
    rows_forwarded = 0
    model_call = HFLM._model_call

    def counting_model_call(self, inps, *rest, **kwargs):
        nonlocal rows_forwarded
        rows_forwarded += inps.shape[0]
        return model_call(self, inps, *rest, **kwargs)

    HFLM._model_call = counting_model_call

    torch.set_num_threads(args.threads)
    loaded = load_model(MODEL)
    qbase = QuantizedBase(loaded.model)
    print(f"{MODEL}, task {args.task}, {torch.get_num_threads()} thread(s), chance {chance:.3f}")
    header = ["configuration", "avg bits", "items", "rows/item", "wall s", "CPU s"]
    header += ["CPU s/item", "acc", "acc_norm"]
    print(f"{header[0]:<14} " + " ".join(f"{h:>8}" for h in header[1:]))
    for label in labels:
        if label == "fp":
            qbase.restore()
            bits = 32.0
        else:
            option = QuantConfig(UNIFORM_BITS[label], 8, "fp32", 64, 256)
            mqc = ModelQConfig.uniform(qbase.targets, option, name=label)
            qbase.apply(mqc)
            bits = mqc.avg_bits
        rows_forwarded = 0
        clock, cpu = time.perf_counter(), time.process_time()
        metrics, protocol = suite.run(loaded.model, loaded.tokenizer, args.limit)
        wall, cpu = time.perf_counter() - clock, time.process_time() - cpu
        items = protocol["tasks"][args.task]["n_samples"]["effective"]
        acc = metrics[f"lm_eval/{args.task}/acc"]
        acc_norm = metrics.get(f"lm_eval/{args.task}/acc_norm", float("nan"))
        row = f"{bits:>8.3f} {items:>8} {rows_forwarded / items:>8.2f} {wall:>8.1f} {cpu:>8.1f}"
        row += f" {cpu / items:>8.3f} {acc:>8.3f} {acc_norm:>8.3f}"
        print(f"{label:<14} {row}", flush=True)


if __name__ == "__main__":
    main()
