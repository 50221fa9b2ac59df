# The embedded demo: synthetic Sentinel-2 L1C products, DEMs and label masks.

if config["demo"]["enabled"]:

    rule demo_data:
        output:
            products=[str(product.path) for product in PRODUCTS.values()],
            dems=sorted({str(scene_path(config["dem"], tile)) for tile, _ in SCENES}),
            labels=[str(scene_path(config["labels"], *scene)) for scene in SCENES],
        log:
            "logs/demo_data.log",
        conda:
            "../../envs/snowcloud.yaml"
        # Not workflow.cores: it is undefined under a cluster executor (--profile profiles/slurm). Locally
        # Snakemake scales this down to --cores.
        threads: max(1, min(8, len(PRODUCTS)))
        params:
            demo=config["demo"],
            raw_data=lambda wildcards: config["raw_data"],
            # Patterns with {tile} / {date}: a function keeps Snakemake from expanding them as wildcards.
            dem=lambda wildcards: config["dem"],
            labels=lambda wildcards: config["labels"],
        script:
            "../scripts/demo_data.py"
