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
        unpack(shard_label_inputs),
        scene="results/scenes/{tile}/{date}.tif",
    output:
        "results/shards/{dataset}/{tile}/{date}.h5",
    log:
        "logs/shard/{dataset}/{tile}/{date}.log",
    conda:
        "../../envs/snowcloud.yaml"
    params:
        options=lambda wildcards: shard_options(config["datasets"][wildcards.dataset]),
    script:
        "../scripts/shard.py"
