"""The claims file (``claims.yaml``) as checked data: claims, their tests and readings, the
paper's main table, the non-inferiority margins, the sensitivity gate's settings and the
planner's caps. ``coalora.verdicts.claims`` decides them; nothing here looks at a result."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import report

CLAIMS_FILE = Path(__file__).with_name("claims.yaml")
STATISTICS = ("hv_diff", "gap", "time_ratio", "unseen_gap")
RELATIONS = ("greater", "less", "within")
READINGS = ("superior", "comparable", "equivalent", "no better")
SUPERIOR, COMPARABLE = READINGS[:2]


@dataclass(frozen=True)
class Margin:
    """A named non-inferiority margin of ``claims.yaml`` and why it is what it is."""

    value: float
    reason: str


@dataclass(frozen=True)
class ClaimTest:
    """One testable relation of a claim (a row of ``claims.yaml``)."""

    statistic: str
    a: str | dict
    relation: str
    threshold: float
    b: str | dict | None = None
    per_rank: bool = False
    paper: str | None = None
    paper_effect: float | list | None = None  # the paper's effect where ``paper`` is text
    # a name in the book's margins: also test "comparable"; for a gap in a claim on both
    # kinds of metric, {higher: name, lower: name}, as a gap's unit follows the metric
    margin: str | dict | None = None
    reading: str | None = None  # how the paper words it (default: superior / equivalent)
    gated: bool | None = None  # overrides the claim's ``gated``

    def __post_init__(self):
        if self.statistic not in STATISTICS:
            raise ValueError(f"claims: statistic {self.statistic!r} is not one of {STATISTICS}")
        if self.relation not in RELATIONS:
            raise ValueError(f"claims: relation {self.relation!r} is not one of {RELATIONS}")
        if (self.b is None) != (self.statistic == "unseen_gap"):
            raise ValueError(f"claims: {self.statistic} needs {'no' if self.b is None else 'a'} b")
        if self.reading is not None and self.reading not in READINGS:
            raise ValueError(f"claims: reading {self.reading!r} is not one of {READINGS}")
        if self.margin is not None and (self.relation == "within" or self.reading):
            raise ValueError("claims: a margin goes with a greater/less relation, no reading")
        if isinstance(self.margin, dict) and set(self.margin) != {"higher", "lower"}:
            raise ValueError(
                f"claims: a per-metric margin needs exactly higher and lower: {self.margin}"
            )

    @property
    def stated_reading(self) -> str:
        return self.reading or ("equivalent" if self.relation == "within" else SUPERIOR)

    def margin_name(self, group: report.Group) -> str | None:
        """The margin's name in this group (a per-metric margin picks the group's metric)."""
        if isinstance(self.margin, dict):
            return self.margin["higher" if group.higher_is_better else "lower"]
        return self.margin

    def margin_names(self) -> list[str]:
        if self.margin is None:
            return []
        return list(self.margin.values()) if isinstance(self.margin, dict) else [self.margin]

    def readings(
        self, margins: dict[str, Margin], group: report.Group
    ) -> list[tuple[str, float, float]]:
        """(reading, threshold, margin) per reading tested: the stated one, and for a test
        with a margin the comparable one (the threshold moved by the margin against the
        claimed side); margin NaN where there is none."""
        name = self.margin_name(group)
        if name is None:
            return [(self.stated_reading, self.threshold, math.nan)]
        m = margins[name].value
        moved = self.threshold - m if self.relation == "greater" else self.threshold + m
        return [(SUPERIOR, self.threshold, math.nan), (COMPARABLE, moved, m)]

    @property
    def paper_range(self) -> list[float]:
        """``paper_effect`` as a list of values (empty: none)."""
        if self.paper_effect is None:
            return []
        values = self.paper_effect if isinstance(self.paper_effect, list) else [self.paper_effect]
        return [float(v) for v in values]


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    groups: dict
    tests: tuple[ClaimTest, ...] = field(default_factory=tuple)
    gated: bool = False  # about configuration-awareness: flat groups cannot test it

    def applies_to(self, group: report.Group) -> bool:
        metric = self.groups.get("metric", "any")
        quantizer = self.groups.get("quantizer", "any")
        if metric != "any" and (metric == "higher") != group.higher_is_better:
            return False
        return quantizer in ("any", group.quantizer)

    def gates(self, test: ClaimTest) -> bool:
        return self.gated if test.gated is None else test.gated


# What the paper's scale names, per metric of a claim's groups (claims.yaml `paper_scale`).
SCALE_FIELDS = ("model", "parameters", "data", "steps", "seeds")


@dataclass(frozen=True)
class ClaimBook:
    claims: tuple[Claim, ...]
    paper_table1: dict
    paper_scale: dict  # "higher" / "lower" -> {SCALE_FIELDS}
    margins: dict[str, Margin] = field(default_factory=dict)
    ceiling: str = ""  # the full-precision LoRA method label (sensitivity diagnostic)
    min_effect: dict[str, str] = field(default_factory=dict)  # "higher"/"lower" -> margin
    planning: dict = field(default_factory=dict)
    # the settled gate: {"snapshot": fraction, "tolerance": {statistic: margin name(s)}}
    settled: dict = field(default_factory=dict)

    def paper_scale_of(self, claim: Claim) -> dict:
        """The paper's scale for a claim: by its groups' metric (``any``: the paper ran it on
        GLUE, as ``higher``)."""
        return self.paper_scale["lower" if claim.groups.get("metric") == "lower" else "higher"]

    def paper_scale_text(self, metric: str = "higher") -> str:
        s = self.paper_scale[metric]
        return f"{s['model']} ({s['parameters']}) on {s['data']}, {s['steps']}, seeds {s['seeds']}"

    def min_effect_of(self, group: report.Group) -> Margin:
        return self.margins[self.min_effect["higher" if group.higher_is_better else "lower"]]

    def settle_tolerance(self, statistic: str, group: report.Group) -> Margin | None:
        """How far a test's effect may move from the half-way snapshot to the end and count
        as settled (None: the statistic is not gated, e.g. a time ratio)."""
        name = self.settled["tolerance"].get(statistic)
        if isinstance(name, dict):
            name = name["higher" if group.higher_is_better else "lower"]
        return None if name is None else self.margins[name]


BOOK_KEYS = {
    "paper_table1", "paper_scale", "margins", "sensitivity", "settled", "planning", "claims",
}  # fmt: skip
PLANNING_KEYS = {"power", "max_seeds", "max_test_examples"}


def load_claims(path: str | Path = CLAIMS_FILE) -> ClaimBook:
    """The claims file, checked: unknown keys and bad values are one-line errors."""
    data = yaml.safe_load(Path(path).read_text())
    for what, keys in (("unknown", set(data) - BOOK_KEYS), ("missing", BOOK_KEYS - set(data))):
        if keys:
            raise ValueError(f"{path}: {what} key(s) {sorted(keys)}")
    scale = data["paper_scale"]
    if (
        not isinstance(scale, dict)
        or set(scale) != {"higher", "lower"}
        or any(not isinstance(s, dict) or set(s) != set(SCALE_FIELDS) for s in scale.values())
    ):
        raise ValueError(
            f"{path}: paper_scale needs higher and lower, each with {', '.join(SCALE_FIELDS)}"
        )
    margins = {name: Margin(**m) for name, m in data["margins"].items()}
    sensitivity, planning = data["sensitivity"], data["planning"]
    if set(planning) != PLANNING_KEYS:
        raise ValueError(f"{path}: planning needs exactly {sorted(PLANNING_KEYS)}")
    if set(sensitivity) != {"ceiling", "min_effect"} or set(sensitivity["min_effect"]) != {
        "higher",
        "lower",
    }:
        raise ValueError(f"{path}: sensitivity needs ceiling and min_effect: {{higher, lower}}")
    claims = []
    for entry in data["claims"]:
        extra = set(entry) - {"id", "claim", "groups", "tests", "gated"}
        if extra:
            raise ValueError(f"{path}: claim {entry.get('id')!r}: unknown key(s) {sorted(extra)}")
        if not isinstance(entry.get("gated"), bool):
            raise ValueError(f"{path}: claim {entry.get('id')!r}: gated must be true or false")
        tests = tuple(ClaimTest(**test) for test in entry["tests"])
        for test in tests:
            for name in test.margin_names():
                if name not in margins:
                    raise ValueError(f"{path}: claim {entry['id']}: unknown margin {name!r}")
            # a gap is in points or in 100 x d ln ppl by the group's metric: one margin
            # cannot serve both
            metric = entry.get("groups", {}).get("metric", "any")
            if test.statistic == "gap" and isinstance(test.margin, str) and metric == "any":
                raise ValueError(
                    f"{path}: claim {entry['id']}: a gap's margin in a claim on any metric "
                    f"needs one per metric ({{higher: ..., lower: ...}}), not {test.margin!r}"
                )
        claims.append(
            Claim(entry["id"], entry["claim"], dict(entry.get("groups", {})), tests, entry["gated"])
        )
    for kind, name in sensitivity["min_effect"].items():
        if name not in margins:
            raise ValueError(f"{path}: sensitivity.min_effect.{kind}: unknown margin {name!r}")
    settled = _checked_settled(data["settled"], margins, path)
    return ClaimBook(
        tuple(claims), data["paper_table1"], data["paper_scale"], margins,
        sensitivity["ceiling"], dict(sensitivity["min_effect"]), dict(planning), settled,
    )  # fmt: skip


def _checked_settled(settled, margins: dict, path) -> dict:
    if not isinstance(settled, dict) or set(settled) != {"snapshot", "tolerance"}:
        raise ValueError(f"{path}: settled needs exactly snapshot and tolerance")
    if not 0 < float(settled["snapshot"]) < 1:
        raise ValueError(f"{path}: settled.snapshot must be a fraction in (0, 1)")
    for statistic, name in settled["tolerance"].items():
        if statistic not in STATISTICS:
            raise ValueError(f"{path}: settled.tolerance: unknown statistic {statistic!r}")
        names = list(name.values()) if isinstance(name, dict) else [name]
        if isinstance(name, dict) and set(name) != {"higher", "lower"}:
            raise ValueError(f"{path}: settled.tolerance.{statistic}: needs higher and lower")
        for each in names:
            if each not in margins:
                raise ValueError(f"{path}: settled.tolerance.{statistic}: unknown margin {each!r}")
    return {"snapshot": float(settled["snapshot"]), "tolerance": dict(settled["tolerance"])}
