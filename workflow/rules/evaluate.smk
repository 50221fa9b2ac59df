# Predictions vs label masks (and per-pixel baselines) -> metrics per date and a summary.


rule evaluate:
    input:
        prediction="results/predictions/{experiment}/{tile}/{date}.tif",
        label=label_path,
        scene="results/scenes/{tile}/{date}.tif",
    output:
        "results/evaluation/{experiment}/{tile}/{date}.json",
    params:
        options=config["evaluation"],
    log:
        "logs/evaluate/{experiment}/{tile}/{date}.log",
    conda:
        "../../envs/snowcloud.yaml"
    script:
        "../scripts/evaluate.py"


def evaluation_summary_inputs(wildcards):
    return {
        "evaluations": [
            f"results/evaluation/{wildcards.experiment}/{tile}/{date}.json"
            for tile, date in LABELLED
        ],
        "stats": f"results/datasets/{experiment_dataset(wildcards)}/stats.json",
    }


rule evaluation_summary:
    input:
        unpack(evaluation_summary_inputs),
    output:
        summary=report(
            "results/evaluation/{experiment}/summary.csv",
            caption="../report/summary.rst",
            category="Evaluation",
        ),
        confusion=report(
            "results/evaluation/{experiment}/confusion.png",
            caption="../report/confusion.rst",
            category="Evaluation",
        ),
    log:
        "logs/evaluation_summary/{experiment}.log",
    conda:
        "../../envs/snowcloud.yaml"
    script:
        "../scripts/evaluation_summary.py"
