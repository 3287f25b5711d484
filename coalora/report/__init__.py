"""Tables and figures from evaluation results (one JSON per evaluation; nothing else is read).

One module per job:

- ``groups``: results -> the prepared frame (``prepare``), experiment groups (``Group``,
  ``experiment_groups``) and the statistics every table, figure and claim shares (``hv``,
  ``acc_gap`` and the other columns of ``Group.stats``; ``hv_of``, ``gap_scale``; the row
  selections ``quantized``, ``one_factor``, ``search_rows``, ``matched_difference``). Its
  docstring defines them.
- ``tables``: the tables (``summary_table`` = table1, ``rank_table``, ``search_table``,
  ``quantizer_table``, ``seen_unseen_table``, ``causal_lm_table``), their column lists,
  ``TABLES`` and ``to_markdown``.
- ``figures``: the matplotlib figures (``pareto_figure``, ``seen_unseen_figure``,
  ``search_ablation_figure``, ``FIGURES``); matplotlib is imported there only.

``coalora report`` (``coalora.report.cli``) writes them. The paper's numbers, the claims and
the ``paper`` table of relations live in ``coalora.verdicts.claims`` (which reads these definitions,
never the other way round). This package re-exports the names other modules and the tests use.
"""

from .figures import (
    FIGURES,
    learning_curve_figure,
    pareto_figure,
    pyplot,
    search_ablation_figure,
    seen_unseen_figure,
)
from .groups import (
    GROUP_KEYS,
    MAX_BITS,
    MIN_BITS,
    REFERENCE_METHOD,
    Group,
    experiment_groups,
    gap_scale,
    hv_of,
    matched_difference,
    method_hypervolume,
    one_factor,
    quantized,
    run_totals_per_seed,
    search_rows,
)
from .tables import (
    CAUSAL_COLUMNS,
    QUANTIZER_COLUMNS,
    RANK_COLUMNS,
    SEARCH_COLUMNS,
    SEEN_UNSEEN_COLUMNS,
    TABLE1_COLUMNS,
    TABLES,
    causal_lm_table,
    quantizer_table,
    rank_table,
    search_table,
    seen_unseen_table,
    summary_table,
    to_markdown,
)

__all__ = [
    "CAUSAL_COLUMNS",
    "FIGURES",
    "learning_curve_figure",
    "GROUP_KEYS",
    "MAX_BITS",
    "MIN_BITS",
    "QUANTIZER_COLUMNS",
    "RANK_COLUMNS",
    "REFERENCE_METHOD",
    "SEARCH_COLUMNS",
    "SEEN_UNSEEN_COLUMNS",
    "TABLE1_COLUMNS",
    "TABLES",
    "Group",
    "causal_lm_table",
    "experiment_groups",
    "gap_scale",
    "hv_of",
    "matched_difference",
    "method_hypervolume",
    "run_totals_per_seed",
    "one_factor",
    "pareto_figure",
    "pyplot",
    "quantized",
    "quantizer_table",
    "rank_table",
    "search_ablation_figure",
    "search_rows",
    "search_table",
    "seen_unseen_figure",
    "seen_unseen_table",
    "summary_table",
    "to_markdown",
]
