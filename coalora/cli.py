"""The ``coalora`` command: the same functions the Snakemake rules call.

Every sub-command reports bad input as one line, ``coalora: error: ...``, exits non-zero
and leaves no output behind (all writes are atomic).
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import forkclient, precision
from .timing import mark

# Each handler imports what its sub-command runs, inside the handler: `coalora --help`,
# `coalora models` or a report never pay for torch, transformers or botorch (seconds each).


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


def _cmd_methods(args) -> None:
    import json

    from .methods import method_traits

    traits = method_traits()
    if args.json:
        print(json.dumps(traits, indent=2))
        return
    for name, t in traits.items():
        trains = {
            "trained": "one run per configuration",
            "fixed": "one run, at the configuration it fixes",
            "full-precision": "one run, at full precision",
        }.get(t["serves"], "one run for every configuration")
        options = f"; options: {', '.join(t['options'])}" if t["options"] else ""
        print(f"{name:12s} serves {t['serves']:15s} {trains}{options}")


def _cmd_rehearse(args) -> None:
    import json

    from .data.rehearsal import SCALE, build_mirror

    out = build_mirror(args.out, args.models, args.tasks, args.lm_eval_tasks)
    print(f"wrote {out}: a rehearsal's hub mirror (stand-ins, not results) at scale")
    print(json.dumps(SCALE.as_dict()))


def _cmd_prepare(args) -> None:
    from .runner import prepare

    info = prepare(args.model, args.task, args.out, seed=args.seed)
    print(
        f"wrote {args.out}: {info['num_targets']} quantizable matrices, splits {info['task_sizes']}"
    )


def _cmd_cost_table(args) -> None:
    import dataclasses

    from .budgets import AllocationSpec, costs_for, load_for_quantization
    from .quant import QuantizedBase

    if not str(args.out).endswith(".safetensors"):
        raise ValueError(f"--out must end in .safetensors, got {args.out}")
    spec = dataclasses.replace(AllocationSpec.from_cli(args), cost_table=args.out)
    loaded = load_for_quantization(args.model, spec.fisher_task, spec.seed)
    costs = costs_for(loaded, QuantizedBase(loaded.model), spec)
    print(f"wrote {args.out}: {tuple(costs.shape)} costs")


def _cmd_allocate(args) -> None:
    from pathlib import Path

    from .budgets import AllocationSpec, budget_label, configs_for_budgets

    if args.budget is not None:
        if not args.out or args.out_dir or args.names:
            raise ValueError("--budget writes one file: give --out (not --out-dir / --names)")
        budgets, names, outs = [args.budget], [args.name], [Path(args.out)]
    else:
        if not args.out_dir or args.out or args.name:
            raise ValueError("--budgets writes one file per budget: give --out-dir")
        budgets = args.budgets
        names = args.names or [f"b{budget_label(b)}" for b in budgets]
        if len(names) != len(budgets):
            raise ValueError(f"{len(names)} --names for {len(budgets)} --budgets")
        outs = [Path(args.out_dir) / f"{name}.json" for name in names]
    configs = configs_for_budgets(
        args.model,
        budgets,
        AllocationSpec.from_cli(args),
        names=names if all(names) else None,
    )
    for mqc, out, budget in zip(configs, outs, budgets, strict=True):
        mqc.save(out)
        print(f"wrote {out}: {len(mqc.modules)} matrices, avg_bits {mqc.avg_bits:.4f} <= {budget}")


def _cmd_train(args) -> None:
    from .runner import train_from_cli

    if args.snapshots_out and not args.evaluate_out:
        raise ValueError("--snapshots-out evaluates the snapshots beside --evaluate-out: give both")
    train_from_cli(args)
    if args.evaluate_out:
        from .evaluate.run import evaluate_trained_from_cli

        evaluate_trained_from_cli(args)


def _cmd_adapt(args) -> None:
    from .runner import adapt_from_cli

    adapt_from_cli(args)


def _cmd_export(args) -> None:
    from .runner import export_from_cli

    export_from_cli(args)


def _cmd_evaluate(args) -> None:
    from .evaluate.run import evaluate_from_cli

    evaluate_from_cli(args)


def _cmd_report(args) -> None:
    from .report.cli import report_from_cli

    report_from_cli(args)


def _cmd_compare(args) -> int:
    from .verdicts.compare import compare_from_cli

    return compare_from_cli(args)


def _cmd_reference(args) -> int:
    from .verdicts.reference import reference_from_cli

    return reference_from_cli(args)


def _cmd_headline(args) -> int:
    from .verdicts.reference import headline_from_cli

    return headline_from_cli(args)


def _cmd_plan(args) -> None:
    from .verdicts.seedplan import plan_from_cli

    plan_from_cli(args)


def _cmd_price(args) -> None:
    from .pricing.price import price_from_cli

    price_from_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coalora", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list the named base models").set_defaults(func=_cmd_models)
    sub.add_parser("tasks", help="list the named tasks").set_defaults(func=_cmd_tasks)
    p = sub.add_parser("methods", help="list the registered methods and their traits")
    p.add_argument("--json", action="store_true", help="the traits as JSON (the workflow's view)")
    p.set_defaults(func=_cmd_methods)

    p = sub.add_parser(
        "rehearse", help="a rehearsal's hub mirror: stand-ins of hub models, tasks, lm-eval data"
    )
    p.add_argument("--models", nargs="*", default=[], help="hub model ids (others skipped)")
    p.add_argument("--tasks", nargs="*", default=[], help="hub tasks (others skipped)")
    p.add_argument("--lm-eval-tasks", nargs="*", default=[], help="lm-eval registry tasks")
    p.add_argument("--out", required=True, help="the mirror directory to write")
    p.set_defaults(func=_cmd_rehearse)

    p = sub.add_parser("prepare", help="make the base model and task data ready (offline)")
    p.add_argument("--model", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True, help="JSON summary to write")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("cost-table", help="quantization error of every matrix x option")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="cost table to write (.safetensors + .json index)")
    _add_allocation_options(p, cost_table=False)
    p.set_defaults(func=_cmd_cost_table)

    p = sub.add_parser("allocate", help="ILP: bit budget -> per-matrix configuration (JSON)")
    p.add_argument("--model", required=True, help="model name, local directory or hub id")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--budget", type=float, help="average bits per parameter")
    which.add_argument("--budgets", type=float, nargs="+", help="several budgets, one model load")
    p.add_argument("--out", help="configuration JSON to write (with --budget)")
    p.add_argument("--out-dir", help="folder of <name>.json files (with --budgets)")
    p.add_argument("--name", help="name stored in the configuration (default ilp-<budget>)")
    p.add_argument("--names", nargs="+", help="names for --budgets (default b<budget>)")
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
    p.add_argument(
        "--evaluate-out",
        metavar="FILE",
        help="per-configuration methods: then evaluate the checkpoint under its configuration "
        "and write the result JSON here (as `coalora evaluate --checkpoint OUT --qconfig ...`, "
        "without a second process start-up); the options below apply",
    )
    _add_eval_options(p)
    _add_allocation_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("adapt", help="adapter for a configuration from a trained checkpoint")
    _add_served_configuration_options(p)
    p.add_argument("--out", required=True, help="PEFT adapter directory to write")
    _add_allocation_options(p)
    p.set_defaults(func=_cmd_adapt)

    p = sub.add_parser(
        "export", help="quantized base model + adapter for a configuration, for any tool"
    )
    _add_served_configuration_options(p)
    p.add_argument(
        "--out",
        required=True,
        help="directory to write: a transformers model (the base under the configuration, "
        "dequantized), qconfig.json, README.md, and the PEFT adapter in adapter/",
    )
    _add_allocation_options(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("evaluate", help="evaluate a trained method (or the base) on configurations")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="trained method (coalora train --out)")
    source.add_argument("--model", help="the base model with no adapter (method 'none')")
    form = p.add_mutually_exclusive_group(required=True)
    form.add_argument("--budget", type=float, help="the ILP configuration of this budget")
    form.add_argument("--qconfig", help="one configuration JSON")
    form.add_argument("--qconfigs", nargs="+", help="many configurations, one process")
    form.add_argument("--full-precision", action="store_true", help="(with --model) unquantized")
    p.add_argument("--out", help="result JSON (with --budget / --qconfig / --full-precision)")
    p.add_argument("--out-dir", help="result directory (with --qconfigs)")
    p.add_argument("--task", help="default: the checkpoint's task (required with --model)")
    _add_eval_options(p)
    _add_allocation_options(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("report", help="tables and figures from evaluation JSONs")
    kinds = p.add_subparsers(dest="report", required=True)
    t = kinds.add_parser("table1", help="main comparison table (CSV + Markdown)")
    t.add_argument("results", nargs="+", help="evaluation JSON files")
    t.add_argument("--out", required=True, help="CSV to write")
    t.add_argument("--markdown", help="Markdown rendering to write")
    t.add_argument("--reference", default=None, help="method of the Acc. gap (default: QLoRA)")
    t = kinds.add_parser(
        "tables", help="ablation, NF/INT, seen/unseen, causal-LM, paper-relation tables"
    )
    t.add_argument("results", nargs="+", help="evaluation JSON files")
    t.add_argument("--out-dir", required=True, help="folder for <table>.csv and <table>.md")
    t.add_argument("--reference", default=None, help="method of the Acc. gap (default: QLoRA)")
    t.add_argument(
        "--curves", nargs="*", help="the runs' snapshot records (the paper table's verdicts)"
    )
    t = kinds.add_parser("claims", help="verdicts on the paper's claims, with 95%% intervals")
    t.add_argument("results", nargs="+", help="evaluation JSON files")
    t.add_argument("--out", required=True, help="CSV to write (one row per claim test)")
    t.add_argument("--markdown", help="Markdown to write (verdict per claim, then the tests)")
    t.add_argument(
        "--replicates", type=int, default=1000, help="paired bootstrap draws of the test examples"
    )
    t.add_argument(
        "--curves", nargs="*", help="the runs' snapshot records (the settled gate, claims.md)"
    )
    f = kinds.add_parser(
        "learning-curve", help="metric vs optimizer steps per evaluated budget, one line per method"
    )
    f.add_argument("results", nargs="+", help="final evaluation JSON files")
    f.add_argument("--curves", nargs="*", help="the runs' snapshot records")
    f.add_argument("--out", required=True, help="PNG to write")
    f.add_argument("--svg", help="SVG to write too")
    f.add_argument("--title", default="")
    for kind, what in [
        ("pareto", "metric vs average bits, one line per method"),
        ("seen-unseen", "metric vs average bits, seen (filled) vs unseen (hollow) configurations"),
        ("search-ablation", "metric vs average bits, one line per CoA-LoRA search mode"),
    ]:
        f = kinds.add_parser(kind, help=what)
        f.add_argument("results", nargs="+", help="evaluation JSON files")
        f.add_argument("--out", required=True, help="PNG to write")
        f.add_argument("--svg", help="SVG to write too")
        f.add_argument("--title", default="")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "compare", help="does a rerun agree with a run? claims, record bits, provenance"
    )
    p.add_argument("a", help="run A: a results directory or its claims.csv")
    p.add_argument("b", help="run B: a results directory or its claims.csv")
    p.add_argument("--out", help="CSV to write (one row per claim test)")
    p.add_argument("--markdown", help="Markdown report to write (also printed)")
    p.add_argument("--gaps", help="CSV to write: per experiment and method, the metric gap B - A")
    p.add_argument(
        "--brief",
        action="store_true",
        help="print a few lines (bit for bit, statistically, or the tests that differ) "
        "instead of the report (--markdown still writes the report)",
    )
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "reference", help="keep a finished run as the reference (results/reference/)"
    )
    p.add_argument("results", help="a finished results directory")
    p.add_argument("--out", default="results/reference", help="where to write it (replaced)")
    p.set_defaults(func=_cmd_reference)

    p = sub.add_parser("headline", help="the README's headline (claims at scale) from a reference")
    p.add_argument("reference", nargs="?", default="results/reference")
    p.add_argument("--readme", help="write it between this README's headline markers")
    p.add_argument("--check", action="store_true", help="with --readme: exit 1 if it differs")
    p.set_defaults(func=_cmd_headline)

    p = sub.add_parser(
        "plan",
        help="seeds (and steps) per experiment that decide the most claims within a time budget",
    )
    p.add_argument("results", help="a finished results directory (records and benchmarks/)")
    p.add_argument("--cores", type=int, default=2, help="cores the planned run will have")
    p.add_argument("--minutes", type=float, default=20.0, help="wall-time budget")
    p.add_argument(
        "--wall", type=float,
        help="the run's measured wall seconds (fill factor; default: make run's measurement)",
    )  # fmt: skip
    p.add_argument("--max-seeds", type=int, default=16)
    p.add_argument("--target", type=int, default=4, help="claims to decide (ranks by P(>=)")
    p.add_argument("--top", type=int, default=5, help="allocations to show")
    p.add_argument("--drop", action="store_true", help="allow an experiment 0 seeds (left out)")
    p.add_argument(
        "--steps", default="1",
        help="optimizer steps to try, as factors of the run's own (e.g. 1,2,4; default 1)",
    )  # fmt: skip
    p.add_argument(
        "--decay", type=float,
        help="assumed exponent of an effect's approach with steps, a + b*steps^-decay "
        "(default: coalora/verdicts/seedplan.py DECAY, with why)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser(
        "price",
        help="a config's jobs by rule, priced in GPU-hours and peak memory from measured costs",
        description="Per experiment of CONFIG: the jobs of each rule (as the workflow's DAG "
        "has them), their optimizer steps, hours and peak memory per job and the GPU-hours, "
        "then the total. Every figure comes from a cost table of measurements (device, date, "
        "commit, command) and says how: measured, or scaled from a measured shape by block "
        "parameters, tokens and LoRA passes per step. Default table: the H200 rows measured "
        "2026-11-28 (coalora/pricing/measured/); benchmarks/gpu_check.sh writes one for the "
        "GPU it runs on.",
    )
    p.add_argument("config", help="a workflow config, e.g. config/paper.yaml")
    p.add_argument("--costs", help="cost table JSON (default: the repository's H200 rows)")
    p.set_defaults(func=_cmd_price)
    return parser


def _add_served_configuration_options(p: argparse.ArgumentParser) -> None:
    """Which configuration ``adapt`` / ``export`` write for (``runner.served_configuration``)."""
    p.add_argument("--checkpoint", required=True, help="trained method (coalora train --out)")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--budget", type=float, help="the ILP configuration of this budget (as evaluate's)"
    )
    group.add_argument("--qconfig", help="a configuration JSON")
    p.epilog = (
        "Neither: the method's own configuration (methods of one configuration, full precision)."
    )


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    """How configurations are evaluated (``coalora.evaluate.run.EvalSettings``)."""
    p.add_argument(
        "--label", help="method name in the results (default the checkpoint's), e.g. coalora-r32"
    )
    p.add_argument("--limit", type=int, help="test examples / perplexity windows / lm-eval docs")
    p.add_argument("--lm-eval-limit", type=int, help="lm-eval docs per task (default: --limit)")
    p.add_argument(
        "--lm-eval-tasks",
        nargs="*",
        help="causal LMs: lm-eval tasks (default: every embedded one; the flag alone for none)",
    )
    p.add_argument("--lm-eval-include", action="append", help="extra lm-eval task YAML folder")
    p.add_argument(
        "--snapshots-out",
        metavar="DIR",
        help="(a trained run) also evaluate each of its snapshots (the learning curve) under "
        "the same configurations, lm-eval tasks left out: DIR/<snapshot>/<result file name> (snapshot: at-<fraction>)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--window", type=int, help="perplexity window in tokens (default 2048)")
    p.add_argument("--max-length", type=int, help="classification truncation")
    p.add_argument(
        "--compute-dtype",
        choices=precision.SETTINGS,
        default=precision.AUTO,
        help="dtype the passes run in (auto: bf16 where the device has bf16 matrix units)",
    )


def _add_allocation_options(p: argparse.ArgumentParser, cost_table: bool = True) -> None:
    if cost_table:
        p.add_argument(
            "--cost-table", help="cost table to read, or to write when absent (.safetensors)"
        )
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
    p.add_argument(
        "--lowrank-rank",
        type=int,
        default=None,
        metavar="R",
        help="LQ-LoRA's costs: the quantization errors of W - SVD_R(W) instead of W",
    )
    p.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    """The command line's entry: in a child of the workflow's fork server when one is
    running (coalora.forkserver: torch and the rest already imported), else right here."""
    if argv is None:
        status = forkclient.call(sys.argv[1:])
        if status is not None:
            return status
    return run_here(argv)


def run_here(argv: list[str] | None = None) -> int:
    # Set-up benchmark marks (coalora.timing; no-ops unless $COALORA_TIMING_FILE is set).
    mark("cli_start")
    try:
        return _main(argv)
    finally:
        mark("cli_end")


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        status = args.func(args)  # None, or a handler's own status (compare: 1 = disagree)
    except (ValueError, FileNotFoundError, KeyError, OSError) as err:
        if args.verbose:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"coalora: error: {message}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
