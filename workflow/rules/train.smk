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


# An inference-only experiment: its given model.pt, copied in. The rerun trigger is the content (SHA-256 in
# params), not the modification time: a touched file reruns nothing, new weights rerun every inference.
rule use_model:
    output:
        "results/models/{experiment}/model.pt",
    log:
        "logs/use_model/{experiment}.log",
    wildcard_constraints:
        experiment=one_of(GIVEN),
    conda:
        "../../envs/snowcloud.yaml"
    params:
        source=lambda wildcards: model_file(config["experiments"][wildcards.experiment]),
        sha256=lambda wildcards: given_model(wildcards)[0],
    script:
        "../scripts/use_model.py"
