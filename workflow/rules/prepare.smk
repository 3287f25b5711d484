# Base model and task data, the cost table, and the ILP configurations of each budget.


rule prepare:
    output:
        f"{RESULTS}/{{exp}}/prepared.json",
    params:
        model=lambda w: exp_conf(w.exp)["model"],
        task=lambda w: exp_conf(w.exp)["task"],
    log:
        f"{RESULTS}/logs/{{exp}}/prepare.log",
    shell:
        "{COALORA} prepare --model {params.model} --task {params.task} --out {output} 2> {log}"


rule cost_table:
    input:
        f"{RESULTS}/{{exp}}/prepared.json",
    output:
        f"{RESULTS}/{{exp}}/cost_table.safetensors",
        f"{RESULTS}/{{exp}}/cost_table.json",
    params:
        model=lambda w: exp_conf(w.exp)["model"],
        extra=lambda w: " ".join(
            ([f"--max-elements {exp_conf(w.exp)['max_elements']}"] if exp_conf(w.exp).get("max_elements") else [])
            + ([f"--fisher-task {exp_conf(w.exp)['task']}"] if exp_conf(w.exp).get("fisher") else [])
        ),
    log:
        f"{RESULTS}/logs/{{exp}}/cost_table.log",
    shell:
        "{COALORA} cost-table --model {params.model} --quantizer {QUANTIZER} {params.extra} "
        "--seed {SEED} --out {output[0]} 2> {log}"


rule allocate:
    input:
        f"{RESULTS}/{{exp}}/cost_table.safetensors",
    output:
        f"{RESULTS}/{{exp}}/qconfigs/{{cfg}}.json",
    params:
        model=lambda w: exp_conf(w.exp)["model"],
        budget=lambda w: cfg_budget(w.cfg),
    log:
        f"{RESULTS}/logs/{{exp}}/allocate-{{cfg}}.log",
    shell:
        "{COALORA} allocate --model {params.model} --budget {params.budget} --quantizer {QUANTIZER} "
        "--cost-table {input} --name {wildcards.cfg} --out {output} 2> {log}"
