# Scene raster + label mask -> one HDF5 shard of normalised patches per dataset, tile and date.

SHARD_KEYS = (
    "normalisation",
    "elevation",
    "patch_size",
    "sampler",
    "classes",
    "ignored_classes",
)


rule shard:
    input:
        scene="results/scenes/{tile}/{date}.tif",
        label=shard_label_path,
        label_files=shard_label_files,
    output:
        "results/shards/{dataset}/{tile}/{date}.h5",
    log:
        "logs/shard/{dataset}/{tile}/{date}.log",
    conda:
        "../../envs/snowcloud.yaml"
    params:
        options=lambda wildcards: {
            key: config["datasets"][wildcards.dataset][key] for key in SHARD_KEYS
        },
    script:
        "../scripts/shard.py"
