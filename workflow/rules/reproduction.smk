# A trained thesis preset beside the numbers the thesis documents for its commit (experiments.<name>.thesis).


rule reproduction:
    input:
        model="results/models/{experiment}/model.pt",
        history="results/models/{experiment}/history.csv",
        stats=lambda wildcards: f"results/datasets/{experiment_dataset(wildcards)}/stats.json",
    output:
        report(
            "results/reproduction/{experiment}.md",
            caption="../report/reproduction.rst",
            category="Reproduction",
        ),
    log:
        "logs/reproduction/{experiment}.log",
    conda:
        "../../envs/snowcloud.yaml"
    threads: 2
    params:
        options=lambda wildcards: {
            key: config["experiments"][wildcards.experiment][key]
            for key in ("dataset", "training", "thesis")
        },
    script:
        "../scripts/reproduction.py"
