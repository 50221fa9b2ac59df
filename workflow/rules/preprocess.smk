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


# The same for an inference-only experiment whose model was trained on scenes made with other options.
rule preprocess_for_model:
    input:
        unpack(preprocess_inputs),
    output:
        "results/scenes/{experiment}/{tile}/{date}.tif",
    log:
        "logs/preprocess/{experiment}/{tile}/{date}.log",
    wildcard_constraints:
        experiment=one_of(GIVEN),
    conda:
        "../../envs/snowcloud.yaml"
    threads: 2
    params:
        options=preprocess_options,
    script:
        "../scripts/preprocess.py"
