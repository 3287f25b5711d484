"""The ``coalora`` command: the same functions the Snakemake rules call.

Every sub-command reports bad input as one line, ``coalora: error: ...``, exits non-zero
and leaves no output behind (all writes are atomic).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# No hub unless a user names a hub id and is online; set before transformers is imported.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _cmd_models(args) -> None:
    from .models import list_models

    for spec in list_models():
        print(f"{spec.name:14s} {spec.family:10s} {spec.description}")
    print("(any local model directory or, when online, any hub id is also accepted)")


def _cmd_tasks(args) -> None:
    from .data import list_tasks

    for spec in list_tasks():
        print(f"{spec.name:16s} {spec.kind:15s} {spec.description}")
    print("(local:DIR defines a task from local TSV/JSONL files; see README)")


def _cmd_allocate(args) -> None:
    from .budgets import configs_for_budgets

    [mqc] = configs_for_budgets(
        args.model,
        [args.budget],
        quantizer=args.quantizer,
        fisher_task=args.fisher_task,
        max_elements=args.max_elements,
        seed=args.seed,
    )
    mqc.save(args.out)
    print(f"wrote {args.out}: {len(mqc.modules)} matrices, avg_bits {mqc.avg_bits:.4f} <= {args.budget}")


def _cmd_train(args) -> None:
    from .runner import train_from_cli

    train_from_cli(args)


def _cmd_adapt(args) -> None:
    from .runner import adapt_from_cli

    adapt_from_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coalora", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list the named base models").set_defaults(func=_cmd_models)
    sub.add_parser("tasks", help="list the named tasks").set_defaults(func=_cmd_tasks)

    p = sub.add_parser("allocate", help="ILP: bit budget -> per-matrix configuration (JSON)")
    p.add_argument("--model", required=True, help="model name, local directory or hub id")
    p.add_argument("--budget", required=True, type=float, help="average bits per parameter")
    p.add_argument("--out", required=True, help="configuration JSON to write")
    _add_allocation_options(p)
    p.set_defaults(func=_cmd_allocate)

    p = sub.add_parser("train", help="train a method (CoA-LoRA or a baseline) on a task")
    p.add_argument("--model", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--budget", type=float, help="per-configuration methods: the ILP budget")
    p.add_argument("--qconfig", help="per-configuration methods: a configuration JSON")
    p.add_argument(
        "--budgets",
        help="CoA-LoRA / Shared-LoRA: comma-separated budgets of the initial training set "
        "(default: the method's own)",
    )
    p.add_argument("--settings", help="JSON file of training settings (TrainSettings fields)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one setting")
    p.add_argument("--max-train", type=int, default=None, help="cap on training examples")
    _add_allocation_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("adapt", help="adapter for a configuration from a trained checkpoint")
    p.add_argument("--checkpoint", required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--budget", type=float)
    group.add_argument("--qconfig")
    p.add_argument("--out", required=True, help="PEFT adapter directory to write")
    _add_allocation_options(p)
    p.set_defaults(func=_cmd_adapt)
    return parser


def _add_allocation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantizer", default="nf", choices=["nf", "int"])
    p.add_argument(
        "--fisher-task",
        default=None,
        help="weight the cost table by the diagonal empirical Fisher on this task's data",
    )
    p.add_argument(
        "--max-elements",
        type=int,
        default=None,
        help="estimate each matrix's costs from this many sampled weights (default: exact)",
    )
    p.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, KeyError, OSError) as err:
        if args.verbose:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"coalora: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
