rule evaluate:
    input:
        models=lambda w: [
            f"{RESULTS}/runs/{w.experiment}/{w.variant}/seed{w.seed}/{stage}/model.pt"
            for stage in pipeline.stages(config, w.experiment, w.variant)
        ],
    output:
        f"{SEEDED}/evaluation.json",
    params:
        recipe=recipe,
        overrides=set_args,
    threads: THREADS
    resources:
        mem_mb=RESOURCES.get("mem_mb", 2000),
        runtime=RESOURCES.get("eval_runtime", 30),
    benchmark:
        # the job's wall time, peak RSS and CPU time (Snakemake measures them)
        f"{RESULTS}/benchmarks/evaluate/{{experiment}}/{{variant}}/seed{{seed}}.tsv",
    log:
        f"{RESULTS}/logs/evaluate/{{experiment}}/{{variant}}/seed{{seed}}.log",
    conda:
        ENV
    shell:
        "repq evaluate {params.recipe} {input.models} --out {output} "
        "--threads {threads} {params.overrides} > {log} 2>&1"
