"""The verdict layer: from evaluation records to a verdict on each of the paper's claims.

Results flow one way: evaluation records -> tables (``coalora.report``) -> verdicts (here).
Nothing here trains or evaluates a model; everything reads the records the engine wrote.

Map of the modules, in the order a verdict is built:

- ``claims.yaml``: the paper's claims as data: each claim's tests (two sides, a statistic,
  a relation to a threshold), the non-inferiority margins and the paper's own numbers.
- ``claimbook``: ``claims.yaml`` loaded and checked (unknown keys refused).
- ``stats``: intervals over training seeds and test samples (paired bootstrap; t over
  seeds, normal over test samples; ``MIN_SEEDS`` for a verdict).
- ``sensitivity``: the per-group gate: can the reference method tell its budgets apart?
- ``paper``: the paper's effect for a test, and where it lies against our interval.
- ``power``: what an open test would take to decide (seeds, examples, core-seconds).
- ``claims``: resolves each test in each (model, task, quantizer) group, decides it, and
  builds the claims table (``results/claims.csv``).
- ``claims_report``: the claims table as Markdown (``results/claims.md``) and the paper table.
- ``seedplan``: ``coalora plan``: seeds per experiment that decide the most claims within a
  wall-time budget, simulated from a finished run.
- ``compare`` and ``metric_gaps``: ``coalora compare A B``: does a rerun reproduce a run
  (bit for bit, or statistically), and by how much each method's metric moved.

``coalora report claims`` (``coalora.report.cli``) writes the claims files atomically.
"""
