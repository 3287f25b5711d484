"""The paper's numbers for a claim test: per GLUE task from its main table
(``claims.yaml``'s ``paper_table1``) or the test's own ``paper_effect``, and where they lie
against our interval (``claims.py``'s ``paper_position`` column)."""

from __future__ import annotations

from .stats import Interval


def paper_numbers(test, book) -> dict[str, float]:
    """The paper's value of a test per GLUE task, from its main table ({} when the test's
    sides are not both in it, or it has its own ``paper`` text)."""
    table = book.paper_table1
    if test.paper or not (isinstance(test.a, str) and isinstance(test.b, str)):
        return {}
    if test.a not in table or test.b not in table:
        return {}
    values = {}
    for task in table[test.a]:
        (hv_a, gap_a, min_a), (hv_b, gap_b, min_b) = table[test.a][task], table[test.b][task]
        values[task] = {
            "hv_diff": hv_a - hv_b,
            "gap": (gap_a or 0.0) - (gap_b or 0.0),
            "time_ratio": min_a / min_b,
        }[test.statistic]
    return values


def format_value(value: float, statistic: str) -> str:
    return f"{value:.2f}" if statistic == "time_ratio" else f"{value:+.2f}"


def paper_cells(test, book) -> dict[str, str]:
    """``paper_numbers`` as the table prints them."""
    return {t: format_value(v, test.statistic) for t, v in paper_numbers(test, book).items()}


def paper_values(test, book) -> list[float]:
    """The paper's effect(s) of a test: per task from its main table, or ``paper_effect``."""
    return list(paper_numbers(test, book).values()) or test.paper_range


def paper_text(test, book) -> str:
    if test.paper:
        return test.paper
    return ", ".join(f"{task} {value}" for task, value in paper_cells(test, book).items())


def paper_position(values: list[float], interval: Interval, statistic: str) -> str:
    """Where the paper's effect (or its range over tasks) lies against our interval:
    *inside* (it overlaps: consistent with the paper's size), *above* (our effect is smaller
    than the paper's), *below* (larger); "n/a" without a paper number."""
    if not values:
        return "n/a"
    low, high = min(values), max(values)
    quoted = format_value(low, statistic)
    if high != low:
        quoted += f"..{format_value(high, statistic)}"
    if not interval.decided:
        return f"paper {quoted}: no interval"
    where = "above" if low > interval.high else "below" if high < interval.low else "inside"
    return f"paper {quoted}: {where}"
