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
