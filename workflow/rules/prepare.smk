# Base model and task data, the cost table, and the ILP configurations of each budget.


rule rehearsal_hub:
    """`--config rehearsal=true`: stand-ins of the preset's hub models and data (coalora.data.rehearsal)."""
    output:
        directory(f"{RESULTS}/rehearsal/hub"),
    params:
        cli=COALORA,
        names=" ".join(
            f"--{kind.replace('_', '-')} {' '.join(names)}"
            for kind, names in rehearsal.stand_ins(config).items()
            if names
        ),
    benchmark:
        f"{RESULTS}/benchmarks/rehearsal_hub.tsv"
    log:
        f"{RESULTS}/logs/rehearsal_hub.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} rehearse {params.names} --out {output} 2> {log}"


rule prepare:
    input:
        rehearsal_hub,
    output:
        f"{RESULTS}/{{exp}}/prepared.json",
    params:
        cli=COALORA,
        model=lambda w: exp_conf(w.exp)["model"],
        task=lambda w: exp_conf(w.exp)["task"],
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/prepare.tsv",
    log:
        f"{RESULTS}/logs/{{exp}}/prepare.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} prepare --model {params.model} --task {params.task} --out {output} 2> {log}"


rule cost_table:
    input:
        f"{RESULTS}/{{exp}}/prepared.json",
    output:
        table=f"{RESULTS}/{{exp}}/cost_table.safetensors",
        index=f"{RESULTS}/{{exp}}/cost_table.json",
    params:
        cli=COALORA,
        model=lambda w: exp_conf(w.exp)["model"],
        quantizer=lambda w: quantizer_of(w.exp),
        extra=lambda w: cost_table_flags(w.exp),
        seed=lambda w: artifact_seed(w.exp),
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/cost_table.tsv",
    log:
        f"{RESULTS}/logs/{{exp}}/cost_table.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} cost-table --model {params.model} --quantizer {params.quantizer} "
        "{params.extra} --seed {params.seed} --out {output.table} 2> {log}"


rule cost_table_lowrank:
    """LQ-LoRA's allocation costs: quantization errors of W - SVD_r(W), r the LoRA rank."""
    input:
        f"{RESULTS}/{{exp}}/prepared.json",
    output:
        table=f"{RESULTS}/{{exp}}/cost_table-lowrank.safetensors",
        index=f"{RESULTS}/{{exp}}/cost_table-lowrank.json",
    params:
        cli=COALORA,
        model=lambda w: exp_conf(w.exp)["model"],
        quantizer=lambda w: quantizer_of(w.exp),
        extra=lambda w: cost_table_flags(w.exp),
        rank=lambda w: lora_rank(w.exp),
        seed=lambda w: artifact_seed(w.exp),
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/cost_table-lowrank.tsv",
    log:
        f"{RESULTS}/logs/{{exp}}/cost_table-lowrank.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} cost-table --model {params.model} --quantizer {params.quantizer} "
        "{params.extra} --lowrank-rank {params.rank} --seed {params.seed} --out {output.table} "
        "2> {log}"


# One job per experiment allocates every budget it needs: the ILP is fast, loading the model
# and the cost table is what costs, so doing it once keeps small runs fast.
for _exp in EXPERIMENTS:

    rule:
        name:
            f"allocate_{_exp}"
        input:
            f"{RESULTS}/{_exp}/cost_table.safetensors",
        output:
            [f"{RESULTS}/{_exp}/qconfigs/{cfg}.json" for cfg in all_cfgs(_exp)],
        params:
            cli=COALORA,
            model=exp_conf(_exp)["model"],
            quantizer=quantizer_of(_exp),
            budgets=" ".join(str(cfg_budget(cfg)) for cfg in all_cfgs(_exp)),
            names=" ".join(all_cfgs(_exp)),
            out_dir=lambda w, output: os.path.dirname(output[0]),
        benchmark:
            f"{RESULTS}/benchmarks/{_exp}/allocate.tsv",
        log:
            f"{RESULTS}/logs/{_exp}/allocate.log",
        conda:
            CONDA_ENV
        shell:
            "{params.cli} allocate --model {params.model} --budgets {params.budgets} "
            "--names {params.names} --quantizer {params.quantizer} --cost-table {input} "
            "--out-dir {params.out_dir} 2> {log}"

    # Methods with their own allocation (LQ-LoRA): the budgets they train and evaluate on.
    for _method in sorted({base_method(_exp, m) for m in exp_methods(_exp) if own_allocation(_exp, m)}):

        rule:
            name:
                f"allocate_{_exp}_{_method.replace('-', '_')}"
            input:
                f"{RESULTS}/{_exp}/cost_table-lowrank.safetensors",
            output:
                [qconfig_path(_exp, _method, cfg) for cfg in cfgs_for(_exp, _method)],
            params:
                cli=COALORA,
                model=exp_conf(_exp)["model"],
                quantizer=quantizer_of(_exp),
                budgets=" ".join(str(cfg_budget(cfg)) for cfg in cfgs_for(_exp, _method)),
                names=" ".join(cfgs_for(_exp, _method)),
                out_dir=lambda w, output: os.path.dirname(output[0]),
                rank=lora_rank(_exp),
            benchmark:
                f"{RESULTS}/benchmarks/{_exp}/allocate-{_method}.tsv",
            log:
                f"{RESULTS}/logs/{_exp}/allocate-{_method}.log",
            conda:
                CONDA_ENV
            shell:
                "{params.cli} allocate --model {params.model} --budgets {params.budgets} "
                "--names {params.names} --quantizer {params.quantizer} --cost-table {input} "
                "--lowrank-rank {params.rank} --out-dir {params.out_dir} 2> {log}"
