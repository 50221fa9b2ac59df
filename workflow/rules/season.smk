# Masks -> the season table and plot of an experiment, from the class counts each mask recorded when it was
# written (no mask is read again), and the masks as a STAC catalogue.


rule season:
    input:
        unpack(season_inputs),
    output:
        table=report(
            "results/season/{experiment}.csv",
            caption="../report/season_table.rst",
            category="Season",
        ),
        plot=report(
            "results/season/{experiment}.png",
            caption="../report/season.rst",
            category="Season",
        ),
    log:
        "logs/season/{experiment}.log",
    conda:
        "../../envs/snowcloud.yaml"
    params:
        options=config["season"],
        labelled=labelled_scenes,
    script:
        "../scripts/season.py"


rule stac:
    input:
        masks=predictions_of,
        quicklooks=quicklooks_of,
    output:
        directory("results/stac/{experiment}"),
    log:
        "logs/stac/{experiment}.log",
    conda:
        "../../envs/snowcloud.yaml"
    script:
        "../scripts/stac.py"
