"""``coalora report``: tables, claims and figures from evaluation JSONs, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .. import report
from ..evaluate.results import read_results
from ..io import atomic_path
from ..verdicts import claims, claims_report

# name -> (table(results, reference, curves), why it can be empty): `coalora report tables`
# outputs; ``curves`` (the runs' snapshot records) only the paper table reads, for its verdicts.
TABLES = {
    **{
        name: (lambda results, reference, curves, table=table: table(results, reference), why)
        for name, (table, why) in report.TABLES.items()
    },
    "paper": (
        lambda results, reference, curves: claims_report.paper_table(results, curves=curves),
        "no group has two methods that the paper's main table relates",
    ),
}


def write_table(table: pd.DataFrame, csv_path, md_path=None, empty: str = "") -> None:
    with atomic_path(csv_path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    if md_path:
        with atomic_path(md_path, suffix=".md") as tmp:
            tmp.write_text(report.to_markdown(table, empty=empty))


def write_figure(fig, png, svg=None) -> None:
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    if svg:
        with atomic_path(svg, suffix=".svg") as tmp:
            fig.savefig(tmp, format="svg")
    report.pyplot().close(fig)


def rehearsal_banner(results: pd.DataFrame) -> str:
    """A warning atop the claims of a rehearsal's records (``coalora.data.rehearsal``), with its
    scale; empty for any other run."""
    scales = [
        p["rehearsal"] for p in results["protocol"] if isinstance(p, dict) and "rehearsal" in p
    ]
    if not scales:
        return ""
    return (
        "> **REHEARSAL, NOT RESULTS.** These records come from `--config rehearsal=true`: "
        "random-init stand-ins of the hub models, generated data in the hub's formats, and "
        f"the micro scale below. Every verdict here only shows the pipeline ran.\n>\n"
        f"> scale: `{json.dumps(scales[0])}`\n\n"
    )


def report_from_cli(args) -> None:
    results = read_results(args.results)
    if not len(results):
        raise ValueError("no evaluation results given")
    if args.report == "table1":
        table = report.summary_table(results, reference=args.reference or report.REFERENCE_METHOD)
        write_table(table, args.out, args.markdown)
        print(f"wrote {args.out}: {len(table)} rows")
    elif args.report == "tables":
        out = Path(args.out_dir)
        curves = read_results(args.curves) if args.curves else None
        for name, (function, empty) in TABLES.items():
            table = function(results, args.reference or report.REFERENCE_METHOD, curves)
            write_table(table, out / f"{name}.csv", out / f"{name}.md", empty)
            print(f"wrote {out / name}.csv/.md: {len(table)} rows")
    elif args.report == "claims":
        book = claims.load_claims()
        curves = read_results(args.curves) if args.curves else None
        table, diagnostics = claims.evaluate_claims(
            results, book, replicates=args.replicates, curves=curves
        )
        summary = claims.claims_summary(table, book)
        write_table(table, args.out)
        if args.markdown:
            curve = None
            if curves is not None:
                curve = claims.snapshot_effects(results, curves, book, args.replicates)
            text = claims_report.claims_markdown(table, summary, diagnostics, book, curve)
            text = rehearsal_banner(results) + text
            with atomic_path(args.markdown, suffix=".md") as tmp:
                tmp.write_text(text)
        if rehearsal_banner(results):
            print("REHEARSAL, NOT RESULTS: stand-in models and data at micro scale")
        for row in summary.itertuples(index=False):
            print(f"{row.claim}: {row.verdict} ({row.tests} tests)")
        print(f"wrote {args.out}: {len(table)} rows")
    elif args.report == "learning-curve":
        curves = read_results(args.curves) if args.curves else None
        write_figure(report.learning_curve_figure(results, curves, args.title), args.out, args.svg)
    else:
        write_figure(report.FIGURES[args.report](results, args.title), args.out, args.svg)
        print(f"wrote {args.out}")
