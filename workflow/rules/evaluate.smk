# Evaluation: one result JSON per (experiment, method, seed, configuration). "none" is the
# quantized base with no adapter (the floor every adapted method must beat). Methods that
# serve one configuration (per-configuration runs, QLoRA-bnb, full fine-tuning) are evaluated
# by their training job (rules train_per_config, train_own_config).


# Shared methods (one checkpoint serving every configuration) and the unadapted base ("none")
# evaluate all their configurations in ONE process: the base model is loaded once and each
# configuration costs only its quantization and adapter. One rule per experiment, since the
# list of outputs depends on the experiment.
for _exp in EXPERIMENTS:
    _shared = [m for m in exp_methods(_exp) if shared(_exp, m)]
    _cfgs = all_cfgs(_exp)

    rule:
        name:
            f"evaluate_{_exp}"
        priority: 1
        input:
            checkpoint=f"{RESULTS}/{_exp}/{{method}}/s{{seed}}/checkpoint",
            qconfigs=[f"{RESULTS}/{_exp}/qconfigs/{cfg}.json" for cfg in _cfgs],
        output:
            [f"{RESULTS}/{_exp}/{{method}}/s{{seed}}/eval/{cfg}.json" for cfg in _cfgs]
            + [f"{RESULTS}/{_exp}/{{method}}/s{{seed}}/curve/{n}/{c}.json" for n in CURVE_NAMES for c in _cfgs],
        wildcard_constraints:
            method="|".join(_shared) if _shared else "^$",
        benchmark:
            f"{RESULTS}/benchmarks/{_exp}/{{method}}/s{{seed}}/eval.tsv"
        params:
            cli=COALORA,
            flags=lambda w, _exp=_exp: eval_flags(_exp, w.seed),
            out_dir=lambda w, _exp=_exp: f"{RESULTS}/{_exp}/{w.method}/s{w.seed}/eval",
            curve=lambda w, _exp=_exp: curve_flag(_exp, w.method, w.seed),
        threads: resources_for(_exp, "evaluate").get("threads", 1)
        resources:
            mem_mb=resources_for(_exp, "evaluate").get("mem_mb", 8000),
            runtime=resources_for(_exp, "evaluate").get("runtime", 60),
            gpu=resources_for(_exp, "evaluate").get("gpu", 0),
        log:
            f"{RESULTS}/logs/{_exp}/{{method}}/s{{seed}}/eval.log",
        conda:
            CONDA_ENV
        shell:
            "{params.cli} evaluate --checkpoint {input.checkpoint} --qconfigs {input.qconfigs} "
            "--label {wildcards.method} {params.flags} --out-dir {params.out_dir} {params.curve} "
            "2> {log}"

    rule:
        name:
            f"evaluate_base_{_exp}"
        input:
            prepared=f"{RESULTS}/{_exp}/prepared.json",
            qconfigs=[f"{RESULTS}/{_exp}/qconfigs/{cfg}.json" for cfg in _cfgs],
        output:
            [f"{RESULTS}/{_exp}/none/s{{seed}}/eval/{cfg}.json" for cfg in _cfgs],
        benchmark:
            f"{RESULTS}/benchmarks/{_exp}/none/s{{seed}}/eval.tsv"
        params:
            cli=COALORA,
            model=exp_conf(_exp)["model"],
            task=exp_conf(_exp)["task"],
            flags=lambda w, _exp=_exp: eval_flags(_exp, w.seed),
            out_dir=lambda w, _exp=_exp: f"{RESULTS}/{_exp}/none/s{w.seed}/eval",
        threads: resources_for(_exp, "evaluate").get("threads", 1)
        resources:
            mem_mb=resources_for(_exp, "evaluate").get("mem_mb", 8000),
            runtime=resources_for(_exp, "evaluate").get("runtime", 60),
            gpu=resources_for(_exp, "evaluate").get("gpu", 0),
        log:
            f"{RESULTS}/logs/{_exp}/none/s{{seed}}/eval.log",
        conda:
            CONDA_ENV
        shell:
            "{params.cli} evaluate --model {params.model} --task {params.task} "
            "--qconfigs {input.qconfigs} --seed {wildcards.seed} {params.flags} "
            "--out-dir {params.out_dir} 2> {log}"
