# snowcloud: Sentinel-2 L1C scenes + DEM -> snow / cloud / water masks.
# Run the demo:   snakemake --cores all
# On Slurm:       snakemake --profile profiles/slurm
# A preset:       snakemake --cores all --configfile config/presets/a82e3cd.yaml
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/auto_labels.smk"
include: "workflow/rules/shards.smk"
include: "workflow/rules/dataset_stats.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/use_model.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/season.smk"
include: "workflow/rules/reproduction.smk"


# Steps that read and write little (per dataset or experiment, not per date) run inside Snakemake itself, also
# under a cluster profile, instead of each costing a queue wait, a status check and two Snakemake starts as a
# cluster job of their own (docs/slurm.md, "Rules that run inside Snakemake").
localrules:
    dataset_stats,
    use_model,
    evaluation_summary,
    season,
    stac,


rule all:
    default_target: True
    input:
        final_targets(),


# Stage targets: `snakemake --cores all scenes` stops after the scene rasters, and so on.
rule scenes:
    input:
        [f"results/scenes/{tile}/{date}.tif" for tile, date in SCENES],


rule shards:
    input:
        [path for dataset in datasets_to_build() for path in shards_of(dataset)],


rule datasets:
    input:
        [f"results/datasets/{dataset}/stats.json" for dataset in datasets_to_build()],


rule models:
    input:
        [f"results/models/{name}/model.pt" for name in experiments_to_run(config)],


rule reproductions:
    input:
        [
            f"results/reproduction/{name}.md"
            for name in experiments_to_run(config)
            if config["experiments"][name]["thesis"]
        ],
