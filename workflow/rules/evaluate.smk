# Predictions vs label masks (and per-pixel baselines) -> metrics per date and a summary.


rule evaluate:
    input:
        unpack(label_inputs),
        prediction="results/predictions/{experiment}/{tile}/{date}.tif",
        scene=scene_of,
    output:
        "results/evaluation/{experiment}/{tile}/{date}.json",
    log:
        "logs/evaluate/{experiment}/{tile}/{date}.log",
    conda:
        "../../envs/snowcloud.yaml"
    threads: 2
    params:
        options=config["evaluation"],
        class_set=evaluation_class_set,
    script:
        "../scripts/evaluate.py"


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
        page=report(
            "results/evaluation/{experiment}/summary.html",
            caption="../report/summary_page.rst",
            category="Evaluation",
        ),
    log:
        "logs/evaluation_summary/{experiment}.log",
    conda:
        "../../envs/snowcloud.yaml"
    params:
        configuration=run_configuration,
    script:
        "../scripts/evaluation_summary.py"
