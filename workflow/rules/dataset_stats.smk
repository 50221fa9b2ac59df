# All shards of a dataset -> class distribution, class weights and the train/validation split.

STATS_KEYS = ("class_weights", "class_fraction", "split")


rule dataset_stats:
    input:
        shards=lambda wildcards: shards_of(wildcards.dataset),
    output:
        stats="results/datasets/{dataset}/stats.json",
        plot=report(
            "results/datasets/{dataset}/class_distribution.png",
            caption="../report/class_distribution.rst",
            category="Dataset",
        ),
    log:
        "logs/dataset_stats/{dataset}.log",
    conda:
        "../../envs/snowcloud.yaml"
    params:
        options=lambda wildcards: {
            key: config["datasets"][wildcards.dataset][key] for key in STATS_KEYS
        },
    script:
        "../scripts/dataset_stats.py"
