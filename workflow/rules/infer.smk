# Model + scene raster -> class mask (COG with colour table) and its quicklook, in one job per scene.


rule infer:
    input:
        model="results/models/{experiment}/model.pt",
        scene=scene_of,
    output:
        prediction="results/predictions/{experiment}/{tile}/{date}.tif",
        quicklook=report(
            "results/quicklooks/{experiment}/{tile}/{date}.png",
            caption="../report/quicklook.rst",
            category="Predictions",
            subcategory="{experiment}",
        ),
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
