rule evaluate:
    input:
        model=rules.train.output.model,
    output:
        f"{RUN}/eval.json",
    params:
        recipe=recipe,
        overrides=set_args,
    threads: THREADS
    resources:
        mem_mb=RESOURCES.get("mem_mb", 2000),
        runtime=RESOURCES.get("eval_runtime", 30),
    log:
        f"{RESULTS}/logs/evaluate/{{experiment}}/{{stage}}.log",
    conda:
        ENV
    shell:
        "repq evaluate {params.recipe} --model-file {input.model} --out {output} "
        "--threads {threads} {params.overrides} > {log} 2>&1"
