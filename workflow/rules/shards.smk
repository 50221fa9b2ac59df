# Scene raster + label mask -> one HDF5 shard of normalised patches per dataset, tile and date.

SHARD_KEYS = ("normalisation", "elevation", "patch_size", "sampler")


rule shard:
    input:
        scene="results/scenes/{tile}/{date}.tif",
        label=label_path,
        label_files=label_files_of,
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
