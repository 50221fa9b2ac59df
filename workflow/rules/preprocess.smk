# SAFE product + DEM -> 13 bands (+ DEM) on B02's 10 m grid, offset-corrected, clipped, as a COG.


def preprocess_inputs(wildcards):
    inputs = {"safe": str(PRODUCTS[(wildcards.tile, wildcards.date)].path)}
    if config["preprocess"]["dem"]:
        inputs["dem"] = dem_path(wildcards)
    return inputs


rule preprocess:
    input:
        unpack(preprocess_inputs),
    output:
        "results/scenes/{tile}/{date}.tif",
    params:
        options=config["preprocess"],
    log:
        "logs/preprocess/{tile}/{date}.log",
    threads: 2
    conda:
        "../../envs/snowcloud.yaml"
    script:
        "../scripts/preprocess.py"
