# Training: one run per shared method, one run per configuration for per-configuration
# methods, one run for a method that chooses its own configuration; each once per seed
# (`s<seed>/` in the path). Every method goes through the same engine (coalora.train) and
# step budget. Which rule trains a label follows from its method's `serves` trait.


# Scheduling (`priority:`): a shared method's training job starts first, since its
# evaluation job waits on it (and CoA-LoRA's are the longest jobs); then evaluations; the
# per-configuration runs, which nothing else waits on, fill the cores in between and at the
# end, so that the run does not end on one long chain with a core idle.
rule train:
    priority: 2
    input:
        prepared=f"{RESULTS}/{{exp}}/prepared.json",
        costs=f"{RESULTS}/{{exp}}/cost_table.safetensors",
    output:
        directory(f"{RESULTS}/{{exp}}/{{method}}/s{{seed}}/checkpoint"),
    wildcard_constraints:
        method=label_pattern(shared),
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/{{method}}/s{{seed}}/train.tsv"
    params:
        cli=COALORA,
        model=lambda w: exp_conf(w.exp)["model"],
        task=lambda w: exp_conf(w.exp)["task"],
        method=lambda w: base_method(w.exp, w.method),
        steps=lambda w: steps_for(w.exp, w.method),
        budgets=lambda w: method_budget_flags(w.exp, w.method),
        quantizer=lambda w: quantizer_of(w.exp),
        settings=lambda w: train_flags(w.exp, w.method, w.seed),
        data=lambda w: data_flags(w.exp),
    threads: lambda w: resources_for(w.exp, "train").get("threads", 1)
    resources:
        mem_mb=lambda w: resources_for(w.exp, "train").get("mem_mb", 8000),
        runtime=lambda w: resources_for(w.exp, "train").get("runtime", 120),
        gpu=lambda w: resources_for(w.exp, "train").get("gpu", 0),
    log:
        f"{RESULTS}/logs/{{exp}}/{{method}}/s{{seed}}/train.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} train --model {params.model} --task {params.task} --method {params.method} "
        "--steps {params.steps} {params.budgets} {params.settings} {params.data} "
        "--quantizer {params.quantizer} --cost-table {input.costs} --out {output} 2> {log}"


rule train_per_config:
    """One run per configuration and seed, evaluated under that configuration in the same
    process (its result JSON is this rule's second output: one start-up instead of two)."""
    input:
        prepared=f"{RESULTS}/{{exp}}/prepared.json",
        qconfig=lambda w: qconfig_path(w.exp, w.method, w.cfg),
    output:
        checkpoint=directory(f"{RESULTS}/{{exp}}/{{method}}/s{{seed}}/{{cfg}}/checkpoint"),
        evaluation=f"{RESULTS}/{{exp}}/{{method}}/s{{seed}}/eval/{{cfg}}.json",
        curve=[f"{RESULTS}/{{exp}}/{{method}}/s{{seed}}/curve/{n}/{{cfg}}.json" for n in CURVE_NAMES],
    wildcard_constraints:
        method=label_pattern(per_config),
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/{{method}}/s{{seed}}/train-{{cfg}}.tsv"
    params:
        cli=COALORA,
        model=lambda w: exp_conf(w.exp)["model"],
        task=lambda w: exp_conf(w.exp)["task"],
        method=lambda w: base_method(w.exp, w.method),
        steps=lambda w: steps_for(w.exp, w.method),
        settings=lambda w: train_flags(w.exp, w.method, w.seed),
        data=lambda w: data_flags(w.exp),
        eval=lambda w: eval_flags(w.exp, w.seed),
        curve=lambda w: curve_flag(w.exp, w.method, w.seed),
    threads: lambda w: resources_for(w.exp, "train").get("threads", 1)
    resources:
        mem_mb=lambda w: resources_for(w.exp, "train").get("mem_mb", 8000),
        runtime=lambda w: resources_for(w.exp, "train").get("runtime", 120),
        gpu=lambda w: resources_for(w.exp, "train").get("gpu", 0),
    log:
        f"{RESULTS}/logs/{{exp}}/{{method}}/s{{seed}}/train-{{cfg}}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} train --model {params.model} --task {params.task} --method {params.method} "
        "--steps {params.steps} --qconfig {input.qconfig} {params.settings} {params.data} "
        "--out {output.checkpoint} --evaluate-out {output.evaluation} "
        "--label {wildcards.method} {params.eval} {params.curve} 2> {log}"


rule train_own_config:
    """One run per seed of a method that chooses its one configuration (QLoRA-bnb's NF4, full
    fine-tuning's full precision), evaluated under it in the same process."""
    input:
        prepared=f"{RESULTS}/{{exp}}/prepared.json",
    output:
        checkpoint=directory(f"{RESULTS}/{{exp}}/{{method}}/s{{seed}}/{{cfg}}/checkpoint"),
        evaluation=f"{RESULTS}/{{exp}}/{{method}}/s{{seed}}/eval/{{cfg}}.json",
        curve=[f"{RESULTS}/{{exp}}/{{method}}/s{{seed}}/curve/{n}/{{cfg}}.json" for n in CURVE_NAMES],
    wildcard_constraints:
        method=label_pattern(own_config),
        cfg="|".join(OWN_CONFIG_LABEL.values()),
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/{{method}}/s{{seed}}/train-{{cfg}}.tsv"
    params:
        cli=COALORA,
        model=lambda w: exp_conf(w.exp)["model"],
        task=lambda w: exp_conf(w.exp)["task"],
        method=lambda w: base_method(w.exp, w.method),
        steps=lambda w: steps_for(w.exp, w.method),
        settings=lambda w: train_flags(w.exp, w.method, w.seed),
        data=lambda w: data_flags(w.exp),
        eval=lambda w: eval_flags(w.exp, w.seed),
        curve=lambda w: curve_flag(w.exp, w.method, w.seed),
    threads: lambda w: resources_for(w.exp, "train").get("threads", 1)
    resources:
        mem_mb=lambda w: resources_for(w.exp, "train").get("mem_mb", 8000),
        runtime=lambda w: resources_for(w.exp, "train").get("runtime", 120),
        gpu=lambda w: resources_for(w.exp, "train").get("gpu", 0),
    log:
        f"{RESULTS}/logs/{{exp}}/{{method}}/s{{seed}}/train-{{cfg}}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} train --model {params.model} --task {params.task} --method {params.method} "
        "--steps {params.steps} {params.settings} {params.data} "
        "--out {output.checkpoint} --evaluate-out {output.evaluation} "
        "--label {wildcards.method} {params.eval} {params.curve} 2> {log}"
