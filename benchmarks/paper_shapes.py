"""The paper-scale code paths on models of the paper's shapes, with random weights.

The hub is out of reach here, so the paper's models (RoBERTa-large, Qwen2.5-1.5B / 3B,
LLaMA-2-7B) are built from their published shapes with random weights and the tiny models'
tokenizers (the vocabulary shrinks to the tokenizer's; every quantized matrix keeps its
real shape). Each is then run through the same functions as the workflow's rules:
``run_training`` (CoA-LoRA with the search, or QLoRA at one budget) and ``evaluate_configs``
under two ILP configurations. Printed per model: the parameter count, the cost-table and
training seconds, seconds per step, the evaluation seconds per configuration and the peak
GPU memory. The numbers say whether the paper presets fit a GPU and how long they take;
the metrics themselves mean nothing (random weights).

    python benchmarks/paper_shapes.py                         # all shapes, on the GPU
    python benchmarks/paper_shapes.py --device cpu --layers 2 --steps 2 --max-length 32
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from coalora.budgets import AllocationSpec  # noqa: E402
from coalora.evaluate import EvalSettings, Trained, evaluate_configs  # noqa: E402
from coalora.models import tiny_tokenizer_dir  # noqa: E402
from coalora.runner import run_training  # noqa: E402
from coalora.train import TrainSettings  # noqa: E402

# Published shapes (config.json of each hub model).
SHAPES = {
    "roberta-large": dict(
        family="roberta", task="bible-testament", hidden_size=1024, num_hidden_layers=24,
        num_attention_heads=16, intermediate_size=4096,
    ),
    "qwen2.5-1.5b": dict(
        family="qwen2", task="bible-lm", hidden_size=1536, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960,
    ),
    "qwen2.5-3b": dict(
        family="qwen2", task="bible-lm", hidden_size=2048, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=2, intermediate_size=11008,
    ),
    "llama-2-7b": dict(
        family="llama", task="bible-lm", hidden_size=4096, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008,
    ),
}  # fmt: skip


def build_model_dir(
    name: str, out: Path, seed: int = 0, layers: int | None = None, dtype=torch.float32
) -> Path:
    """Write a random-init model of ``name``'s shape plus a tiny tokenizer to ``out``
    (``layers``: keep only that many blocks, for a quick check of the code path; ``dtype``:
    the dtype its weights ship in, e.g. bf16 as the hub's Qwen2.5 and LLaMA-2 checkpoints)."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        LlamaConfig,
        Qwen2Config,
        RobertaConfig,
    )

    shape = dict(SHAPES[name])
    family = shape.pop("family")
    shape.pop("task")
    if layers:
        shape["num_hidden_layers"] = layers
    encoder = family == "roberta"
    tokenizer = AutoTokenizer.from_pretrained(
        tiny_tokenizer_dir("tiny-bert" if encoder else "tiny-llama")
    )
    common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **shape)
    if encoder:
        config = RobertaConfig(max_position_embeddings=514, **common)
        config.architectures = ["RobertaForSequenceClassification"]
        auto = AutoModelForSequenceClassification
    else:
        cls = Qwen2Config if family == "qwen2" else LlamaConfig
        config = cls(max_position_embeddings=4096, tie_word_embeddings=False, **common)
        config.architectures = ["Qwen2ForCausalLM" if family == "qwen2" else "LlamaForCausalLM"]
        auto = AutoModelForCausalLM
    torch.manual_seed(seed)
    model = auto.from_config(config, dtype=dtype)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def run_shape(name: str, args, work: Path) -> dict:
    model_dir = build_model_dir(name, work / name, layers=args.layers)
    task = SHAPES[name]["task"]
    settings = TrainSettings.from_dict(
        dict(
            steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, r=64,
            alpha=16, lr=1e-4, seed=0, device=args.device, configs_per_step=2,
            epoch_steps=max(1, args.steps // 2), search_candidates=2, search_eval_batches=1,
        )
    )  # fmt: skip
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    row = {"model": name}
    for method, extra in (
        ("coalora", {"budgets": [2.5, 3.0, 3.5, 4.0]}),
        ("qlora", {"budget": 3.0}),
    ):
        out = work / f"{name}-{method}"
        started = time.perf_counter()
        run_training(
            model=str(model_dir), task=task, method=method, settings=settings, out=out,
            max_train=args.batch_size * args.steps * 2,
            allocation=AllocationSpec(max_elements=args.max_elements),
            progress=False, **extra,
        )  # fmt: skip
        manifest = json.loads((out / "manifest.json").read_text())
        row[f"{method} total s"] = round(time.perf_counter() - started, 1)
        row[f"{method} s/step"] = round(manifest["train_seconds"] / manifest["steps"], 3)
        if method == "coalora":
            started = time.perf_counter()
            evaluate_configs(
                Trained(out), [2.5, 3.5], settings=EvalSettings(limit=args.eval_limit),
                allocation=AllocationSpec(max_elements=args.max_elements),
            )  # fmt: skip
            row["eval s/config"] = round((time.perf_counter() - started) / 2, 1)
    row["params M"] = round(sum(math.prod(s.get_shape()) for s in _params(model_dir)) / 1e6, 1)
    if args.device.startswith("cuda"):
        row["peak GPU GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return row


def _params(model_dir: Path):
    from safetensors import safe_open

    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(f, "pt") as handle:
            for key in handle.keys():
                yield handle.get_slice(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--eval-limit", type=int, default=16)
    parser.add_argument("--layers", type=int, default=None, help="fewer blocks (quick check)")
    parser.add_argument(
        "--max-elements", type=int, default=65536, help="cost-table sampling per matrix"
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="paper-shapes-") as tmp:
        for name in args.shapes.split(","):
            row = run_shape(name, args, Path(tmp))
            print(json.dumps(row), flush=True)
            rows.append(row)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()
