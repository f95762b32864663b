rule export:
    input:
        models=lambda w: [
            f"{RESULTS}/runs/{w.experiment}/{w.variant}/seed{w.seed}/{stage}/model.pt"
            for stage in pipeline.quantized_stages(config, w.experiment, w.variant)
        ],
    output:
        f"{SEEDED}/export.json",
    threads: THREADS
    resources:
        mem_mb=RESOURCES.get("mem_mb", 2000),
        runtime=RESOURCES.get("eval_runtime", 30),
    benchmark:
        # the job's wall time, peak RSS and CPU time (Snakemake measures them)
        f"{RESULTS}/benchmarks/export/{{experiment}}/{{variant}}/seed{{seed}}.tsv",
    log:
        f"{RESULTS}/logs/export/{{experiment}}/{{variant}}/seed{{seed}}.log",
    conda:
        ENV
    shell:
        "repq export {input.models} --summary {output} --threads {threads} > {log} 2>&1"
