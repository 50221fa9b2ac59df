# Shards + dataset stats -> a trained model. The resumable training state lives in
# results/models/{experiment}/state/ (not an output): rerunning a killed job continues from it.


rule train:
    input:
        unpack(train_inputs),
    output:
        model="results/models/{experiment}/model.pt",
        history="results/models/{experiment}/history.csv",
        curves=report(
            "results/models/{experiment}/curves.png",
            caption="../report/curves.rst",
            category="Training",
        ),
    log:
        "logs/train/{experiment}.log",
    wildcard_constraints:
        experiment=one_of(TRAINED),
    conda:
        "../../envs/snowcloud.yaml"
    threads: 4
    params:
        options=lambda wildcards: {
            key: config["experiments"][wildcards.experiment][key]
            for key in ("dataset", "model", "training")
        },
        state_dir=lambda wildcards: f"results/models/{wildcards.experiment}/state",
    script:
        "../scripts/train.py"
