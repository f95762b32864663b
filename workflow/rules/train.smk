rule train:
    input:
        data=data_ready,
        tracking=rules.tracking_init.output,
        init=init_model,
    output:
        model=f"{RUN}/model.pt",
        deploy=f"{RUN}/deploy.pt",
        metrics=f"{RUN}/metrics.json",
        history=f"{RUN}/history.csv",
        precision=f"{RUN}/precision.tsv",
        health=report(
            f"{RUN}/health.csv",
            caption="../report/health.rst",
            category="Quantization health",
            subcategory="{experiment}",
            labels={
                "experiment": "{experiment}",
                "variant": "{variant}",
                "seed": "{seed}",
                "stage": "{stage}",
            },
        ),
        curve=report(
            f"{RUN}/curve.png",
            caption="../report/curve.rst",
            category="Training curves",
            subcategory="{experiment}",
            labels={
                "experiment": "{experiment}",
                "variant": "{variant}",
                "seed": "{seed}",
                "stage": "{stage}",
            },
        ),
    params:
        recipe=recipe,
        init=init_arg,
        out=parent,
        overrides=set_args,
        repq=repq_command(GPUS),
        # resumable checkpoints: an undeclared folder, kept when Snakemake reruns a job
        resume=lambda w: f"{RESULTS}/resume/{w.experiment}/{w.variant}/seed{w.seed}/{w.stage}",
    threads: THREADS
    resources:
        gpu=GPUS,
        mem_mb=RESOURCES.get("mem_mb", 2000),
        runtime=RESOURCES.get("runtime", 60),
    benchmark:
        # the job's wall time, peak RSS and CPU time (Snakemake measures them)
        f"{RESULTS}/benchmarks/train/{{experiment}}/{{variant}}/seed{{seed}}/{{stage}}.tsv",
    log:
        f"{RESULTS}/logs/train/{{experiment}}/{{variant}}/seed{{seed}}/{{stage}}.log",
    conda:
        ENV
    shell:
        "{params.repq} train {params.recipe} --stage {wildcards.stage} {params.init} "
        "--out {params.out} "
        "--resume-dir {params.resume} --threads {threads} {params.overrides} > {log} 2>&1"
