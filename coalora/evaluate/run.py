"""The command-line entry points of evaluation: ``coalora evaluate`` (``evaluate_from_cli``)
and ``coalora train --evaluate-out`` (``evaluate_trained_from_cli``). They only turn flags
into a source, configurations and output paths for the driver (``driver.evaluate_configs``).
"""

from __future__ import annotations

from pathlib import Path

from .. import precision
from ..budgets import AllocationSpec
from ..methods import Serves, get_method
from .configs import TRAINED
from .driver import evaluate_configs
from .measure import EvalSettings
from .perplexity import DEFAULT_WINDOW
from .sources import BareBase, Trained


def evaluate_from_cli(args) -> None:
    """``coalora evaluate``: evaluate a checkpoint (or the bare base model) and write results.

    Flags (argparse dest in brackets; exactly one of --checkpoint / --model, and exactly one
    of --budget / --qconfig / --qconfigs / --full-precision):

    --checkpoint DIR       [checkpoint]  trained method (coalora train --out)
    --model NAME           [model]       evaluate the base model without adapter (method "none")
    --budget FLOAT         [budget]      the ILP configuration for this budget
    --qconfig FILE         [qconfig]     one configuration JSON
    --qconfigs FILE...     [qconfigs]    many configurations (nargs="+"), one process; each
                                         result goes to OUT_DIR/<qconfig file stem>.json
    --full-precision       [full_precision]  (with --model) the unquantized base
    --out FILE             [out]         result JSON (with --budget / --qconfig / --full-precision)
    --out-dir DIR          [out_dir]     result directory (with --qconfigs)
    --task NAME            [task]        default: the checkpoint's task (required with --model)
    --label NAME           [label]       (with --checkpoint) the results' method name, e.g. an
                                         ablation variant "coalora-r32"
    --limit N              [limit]       test examples / perplexity windows / lm-eval docs per task
    --lm-eval-limit N      [lm_eval_limit]  lm-eval docs per task (default: --limit)
    --lm-eval-tasks T...   [lm_eval_tasks]  (nargs="*") causal LMs: lm-eval tasks (default every
                                         embedded one; give the flag with no names for none)
    --lm-eval-include DIR  [lm_eval_include] (action="append") extra lm-eval task YAML dirs
    --snapshots-out DIR    [snapshots_out]  (--checkpoint) each snapshot's records too:
                                         DIR/at-<fraction>/<file name of the final record>
    --batch-size N         [batch_size]  default 8
    --window N             [window]      perplexity window, default 2048 (capped at the model's)
    --max-length N         [max_length]  classification truncation (default: training length)
    --compute-dtype D      [compute_dtype]  auto | bf16 | fp32 (coalora.precision; default auto)
    --quantizer nf|int     [quantizer]   with --model --budget (a checkpoint uses its own)
    --fisher-task, --max-elements, --seed  as for `coalora allocate` (budgets; seed of --model)
    """
    opt = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    checkpoint, model = opt("checkpoint"), opt("model")
    if (checkpoint is None) == (model is None):
        raise ValueError("give exactly one of --checkpoint and --model")
    forms = {
        "--budget": opt("budget") is not None,
        "--qconfig": opt("qconfig") is not None,
        "--qconfigs": bool(opt("qconfigs")),
        "--full-precision": bool(opt("full_precision")),
    }
    if sum(forms.values()) != 1:
        raise ValueError("give exactly one of --budget, --qconfig, --qconfigs, --full-precision")
    if forms["--full-precision"] and checkpoint is not None:
        raise ValueError("--full-precision evaluates the base model: use it with --model")
    if forms["--qconfigs"]:
        if opt("out_dir") is None:
            raise ValueError("--qconfigs writes one file per configuration: give --out-dir")
        items = list(opt("qconfigs"))
    else:
        if opt("out") is None:
            raise ValueError("give --out (the result JSON to write)")
        items = [opt("budget") if forms["--budget"] else opt("qconfig")]
        if forms["--full-precision"]:
            items = [None]
    settings = eval_settings_from_cli(args)
    allocation = AllocationSpec(fisher_task=opt("fisher_task"), max_elements=opt("max_elements"))
    if forms["--qconfigs"]:
        # Files are named by the qconfig file's stem (what a workflow expects); the record's
        # config_name is the configuration's own name, else that stem.
        stems = [Path(p).stem for p in items]
        if len(set(stems)) != len(stems):
            raise ValueError(
                "two --qconfigs files have the same file name: their results would collide"
            )
        out_paths = [Path(opt("out_dir")) / f"{stem}.json" for stem in stems]
    else:
        out_paths = [Path(opt("out"))]
    if checkpoint is not None:
        source = Trained(checkpoint, label=opt("label"))
    else:
        if opt("task") is None:
            raise ValueError("--model needs --task")
        source = BareBase(model, seed=opt("seed") or 0, quantizer=opt("quantizer") or "nf")
    records = evaluate_configs(
        source, items, opt("task"), out_paths, settings, allocation, opt("snapshots_out")
    )
    finals, snapshots = records[: len(out_paths)], records[len(out_paths) :]
    for path, record in zip(out_paths, finals, strict=True):
        print(summary_line(path, record))
    for snapshot in snapshots:
        print(f"  snapshot at step {snapshot['train_steps']}: {summary_line('', snapshot)}")


def eval_settings_from_cli(args) -> EvalSettings:
    """The evaluation options of ``coalora evaluate`` / ``coalora train --evaluate-out``."""
    opt = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    lm_eval_tasks = opt("lm_eval_tasks")
    return EvalSettings(
        batch_size=opt("batch_size") or 8,
        max_length=opt("max_length"),
        window=opt("window") or DEFAULT_WINDOW,
        limit=opt("limit"),
        lm_eval_limit=opt("lm_eval_limit"),
        lm_eval_tasks=None if lm_eval_tasks is None else list(lm_eval_tasks),
        lm_eval_include=opt("lm_eval_include") or (),
        compute_dtype=opt("compute_dtype") or precision.AUTO,
    )


def evaluate_trained_from_cli(args) -> None:
    """``coalora train --evaluate-out FILE``: evaluate the checkpoint just written under the
    configuration it was trained on (``--qconfig`` or ``--budget``; for a method that chooses
    its own configuration, that one), as ``coalora evaluate`` would, in the same process (one
    start-up and import instead of two)."""
    own = get_method(args.method).serves
    if args.qconfig is not None or args.budget is not None:
        item = args.qconfig if args.qconfig is not None else args.budget
    elif own == Serves.FULL_PRECISION:
        item = None
    elif own == Serves.FIXED_CONFIGURATION:
        item = TRAINED
    else:
        raise ValueError(
            "--evaluate-out evaluates a run under its one configuration: give --qconfig or "
            f"--budget (method {args.method!r} serves {own} configurations)"
        )
    allocation = AllocationSpec(fisher_task=args.fisher_task, max_elements=args.max_elements)
    source = Trained(args.out, label=args.label)
    settings = eval_settings_from_cli(args)
    record, *snapshots = evaluate_configs(
        source, [item], None, [Path(args.evaluate_out)], settings, allocation,
        getattr(args, "snapshots_out", None),
    )  # fmt: skip
    print(summary_line(args.evaluate_out, record))
    for snapshot in snapshots:
        print(f"  snapshot at step {snapshot['train_steps']}: {summary_line('', snapshot)}")


def summary_line(path, record: dict) -> str:
    primary = record["primary_metric"]
    return (
        f"wrote {path}: {record['method']} {record['config_name']} "
        f"avg_bits {record['avg_bits']:.3f} {primary} {record['metrics'][primary]:.4f} "
        f"(set-up {record['setup_seconds']:.2f} s, eval {record['eval_seconds']:.1f} s)"
    )
