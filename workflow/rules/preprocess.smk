# SAFE product + DEM -> 13 bands (+ DEM) on B02's 10 m grid, offset-corrected, clipped, as a COG.


rule preprocess:
    input:
        unpack(preprocess_inputs),
    output:
        "results/scenes/{tile}/{date}.tif",
    log:
        "logs/preprocess/{tile}/{date}.log",
    conda:
        "../../envs/snowcloud.yaml"
    threads: 2
    params:
        options=config["preprocess"],
    script:
        "../scripts/preprocess.py"
