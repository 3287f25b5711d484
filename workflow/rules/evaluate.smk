# Evaluation: one result JSON per (experiment, method, configuration). "none" is the
# quantized base with no adapter (the floor every adapted method must beat).


def eval_checkpoint(w):
    return checkpoint_path(w.exp, w.method, w.cfg)


rule evaluate:
    input:
        checkpoint=eval_checkpoint,
        qconfig=f"{RESULTS}/{{exp}}/qconfigs/{{cfg}}.json",
    output:
        f"{RESULTS}/{{exp}}/{{method}}/eval/{{cfg}}.json",
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/{{method}}/eval-{{cfg}}.tsv"
    params:
        flags=lambda w: eval_flags(w.exp),
    resources:
        mem_mb=lambda w: resources_for(w.exp, "evaluate").get("mem_mb", 8000),
        runtime=lambda w: resources_for(w.exp, "evaluate").get("runtime", 60),
        gpu=lambda w: resources_for(w.exp, "evaluate").get("gpu", 0),
    log:
        f"{RESULTS}/logs/{{exp}}/{{method}}/eval-{{cfg}}.log",
    shell:
        "{COALORA} evaluate --checkpoint {input.checkpoint} --qconfig {input.qconfig} "
        "{params.flags} --out {output} 2> {log}"


rule evaluate_base:
    input:
        prepared=f"{RESULTS}/{{exp}}/prepared.json",
        qconfig=f"{RESULTS}/{{exp}}/qconfigs/{{cfg}}.json",
    output:
        f"{RESULTS}/{{exp}}/none/eval/{{cfg}}.json",
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/none/eval-{{cfg}}.tsv"
    params:
        model=lambda w: exp_conf(w.exp)["model"],
        task=lambda w: exp_conf(w.exp)["task"],
        flags=lambda w: eval_flags(w.exp),
    resources:
        mem_mb=lambda w: resources_for(w.exp, "evaluate").get("mem_mb", 8000),
        runtime=lambda w: resources_for(w.exp, "evaluate").get("runtime", 60),
        gpu=lambda w: resources_for(w.exp, "evaluate").get("gpu", 0),
    log:
        f"{RESULTS}/logs/{{exp}}/none/eval-{{cfg}}.log",
    shell:
        "{COALORA} evaluate --model {params.model} --task {params.task} --qconfig {input.qconfig} "
        "--seed {SEED} {params.flags} --out {output} 2> {log}"


ruleorder: evaluate_base > evaluate
