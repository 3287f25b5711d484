"""What a run of the workflow will cost on GPUs, before it runs (``coalora price CONFIG``).

- ``shapes``: the paper's models by their published shapes (hub id, architecture sizes) and
  their block parameters, the measure costs are scaled by.
- ``jobs``: the jobs the workflow's DAG will run for a configuration, by rule, with their
  optimizer steps and evaluated configurations (from the config and the methods' traits,
  as workflow/rules/common.smk derives them; tests/test_price.py checks both agree).
- ``costs``: tables of measured per-step, per-evaluation and memory costs (JSON files with
  their device, date, commit and command; ``measured/`` holds the repository's) and the
  look-up that scales a measured row to another shape, batch or K and says how.
- ``price``: jobs x costs -> the printed price per experiment and rule, and the total.
"""
