# Model + scene raster -> class mask (COG with colour table) and a quicklook.


rule infer:
    input:
        model="results/models/{experiment}/model.pt",
        scene=scene_of,
    output:
        "results/predictions/{experiment}/{tile}/{date}.tif",
    log:
        "logs/infer/{experiment}/{tile}/{date}.log",
    conda:
        "../../envs/snowcloud.yaml"
    threads: 2
    params:
        options=lambda wildcards: config["experiments"][wildcards.experiment][
            "inference"
        ],
    script:
        "../scripts/infer.py"


rule quicklook:
    input:
        scene=scene_of,
        prediction="results/predictions/{experiment}/{tile}/{date}.tif",
    output:
        report(
            "results/quicklooks/{experiment}/{tile}/{date}.png",
            caption="../report/quicklook.rst",
            category="Predictions",
            subcategory="{experiment}",
        ),
    log:
        "logs/quicklook/{experiment}/{tile}/{date}.log",
    conda:
        "../../envs/snowcloud.yaml"
    script:
        "../scripts/quicklook.py"
