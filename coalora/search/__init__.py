"""Pareto-based configuration search of CoA-LoRA (docs/method.md section 5).

* ``pareto``     non-dominated masks, hypervolume, reference points, segmented filtering;
* ``surrogate``  the loss GP, the exact bits model and the log-EHVI acquisition;
* ``coordinate`` discrete coordinate ascent of the acquisition over encodings;
* ``driver``     ``ParetoSearch``: pool, training set and rounds (full / frozen / random).
"""

from .coordinate import WalkResult, coordinate_search, neighbours
from .driver import MODES, CandidateRecord, ParetoSearch, SearchConfig, SearchRound
from .pareto import (
    hypervolume,
    pareto_mask,
    reference_point,
    segment_indices,
    segmented_pareto_filter,
)
from .surrogate import (
    AnalyticLogEHVI,
    AverageBits,
    FieldRBFKernel,
    LogEHVIAcquisition,
    ObjectiveFrame,
    PointwiseGP,
    fit_gp,
    make_kernel,
    normalise_encodings,
)

__all__ = [
    "MODES",
    "AnalyticLogEHVI",
    "AverageBits",
    "FieldRBFKernel",
    "CandidateRecord",
    "LogEHVIAcquisition",
    "ObjectiveFrame",
    "ParetoSearch",
    "PointwiseGP",
    "SearchConfig",
    "SearchRound",
    "WalkResult",
    "coordinate_search",
    "fit_gp",
    "hypervolume",
    "make_kernel",
    "neighbours",
    "normalise_encodings",
    "pareto_mask",
    "reference_point",
    "segment_indices",
    "segmented_pareto_filter",
]
