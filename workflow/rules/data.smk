if MINI:

    rule prepare_mini:
        output:
            manifest=f"{MINI_OUT}/manifest.json",
        params:
            out=parent,
            seed=MINI.get("seed", 0),
            train=MINI.get("train_per_class", 64),
            val=MINI.get("val_per_class", 24),
            size=MINI.get("image_size", 40),
        log:
            f"{RESULTS}/logs/prepare_mini.log",
        conda:
            ENV
        shell:
            "repq prepare-data --mini --out {params.out} --seed {params.seed} "
            "--train-per-class {params.train} --val-per-class {params.val} "
            "--image-size {params.size} > {log} 2>&1"

else:

    rule check_data:
        output:
            touch(f"{RESULTS}/data/{{experiment}}.checked"),
        params:
            recipe=recipe,
            overrides=set_args,
        log:
            f"{RESULTS}/logs/check_data/{{experiment}}.log",
        conda:
            ENV
        shell:
            "repq prepare-data --check {params.recipe} {params.overrides} > {log} 2>&1"


rule tracking_init:
    output:
        f"{RESULTS}/tracking.ready",
    params:
        recipe=config["experiments"][EXPERIMENTS[0]]["recipe"],
        overrides=pipeline.tracking_args(config),
    log:
        f"{RESULTS}/logs/tracking_init.log",
    conda:
        ENV
    shell:
        "repq tracking-init {params.recipe} {params.overrides} --marker {output} > {log} 2>&1"
