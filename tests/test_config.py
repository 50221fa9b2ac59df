import copy

import pytest
import yaml

from snowcloud.config import ConfigError, load_config, merge_into, validate_config


@pytest.fixture
def default_config(repo):
    with open(repo / "config" / "config.yaml") as handle:
        return yaml.safe_load(handle)


def test_default_config_is_valid_and_gets_defaults(default_config):
    config = validate_config(copy.deepcopy(default_config))
    assert config["preprocess"]["clip"]["method"] == "none"
    assert config["datasets"]["demo"]["split"]["seed"] == 42
    assert config["experiments"]["demo"]["training"]["optimizer"]["betas"] == [0.9, 0.999]
    assert config["evaluation"]["ndsi"]["snow_ndsi"] == 0.4


def test_unknown_key_is_named_with_a_suggestion(default_config):
    default_config["preprocess"]["resampeling"] = "cubic"
    with pytest.raises(ConfigError, match=r"unknown key 'preprocess.resampeling' \(did you mean 'resampling'\?\)"):
        validate_config(default_config)


def test_wrong_type_and_value_are_named(default_config):
    default_config["datasets"]["demo"]["patch_size"] = "256"
    default_config["preprocess"]["resampling"] = "bicubic"
    with pytest.raises(ConfigError) as error:
        validate_config(default_config)
    assert "datasets.demo.patch_size: '256' should be of type integer" in str(error.value)
    assert "preprocess.resampling: 'bicubic' is not one of" in str(error.value)


def test_experiment_must_name_a_known_dataset(default_config):
    default_config["experiments"]["demo"]["dataset"] = "nope"
    with pytest.raises(ConfigError, match="experiments.demo.dataset: 'nope' is not a key of datasets"):
        validate_config(default_config)


def test_inference_only_experiment_takes_a_model_path_instead_of_a_dataset(default_config):
    default_config["experiments"]["reuse"] = {"model": "models/thesis.pt"}
    config = validate_config(default_config)
    assert config["experiments"]["reuse"]["model"] == "models/thesis.pt"
    assert config["experiments"]["demo"]["model"]["architecture"] == "unet", "a trained experiment keeps its network"


@pytest.mark.parametrize(
    ("experiment", "message"),
    [
        ({"model": "m.pt", "dataset": "demo"}, "model is the path of a trained model.pt, so there is no dataset"),
        ({"model": {"base_channels": 8}}, "give a dataset to train on, or model: path/to/model.pt"),
    ],
)
def test_experiment_needs_either_a_dataset_or_a_model_path(default_config, experiment, message):
    default_config["experiments"]["x"] = experiment
    with pytest.raises(ConfigError, match=f"experiments.x: {message}"):
        validate_config(default_config)


def test_presets_are_valid(repo):
    presets = sorted((repo / "config" / "presets").glob("*.yaml"))
    for preset in presets:
        load_config(repo / "config" / "config.yaml", preset)


def test_merge_is_deep_like_snakemake_configfile():
    base = {"a": {"b": 1, "c": 2}, "d": [1, 2]}
    merge_into(base, {"a": {"b": 5}, "d": [3]})
    assert base == {"a": {"b": 5, "c": 2}, "d": [3]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"preprocess": {"clip": {"method": "percentile", "percentiles": [99.9, 0.1]}}},
            r"preprocess.clip.percentiles: \[99.9, 0.1\] must be \[low, high\] with low < high",
        ),
        (
            {"preprocess": {"clip": {"method": "sigma", "n_sigma": 0}}},
            "preprocess.clip.n_sigma: 0 is less than or equal to the minimum of 0",
        ),
        (
            {"experiments": {"demo": {"training": {"augmentation": {"erase_size": [64, 8]}}}}},
            r"experiments.demo.training.augmentation.erase_size: \[64, 8\] must be \[smallest, largest\]",
        ),
        (
            {"experiments": {"demo": {"training": {"augmentation": {"spectral": {"haze": [0.04, 0.0]}}}}}},
            r"experiments.demo.training.augmentation.spectral.haze: \[0.04, 0.0\] must be \[low, high\]",
        ),
        (
            {"experiments": {"demo": {"training": {"augmentation": {"spectral": {"blur_sigma": [0.5]}}}}}},
            r"experiments.demo.training.augmentation.spectral.blur_sigma: \[0.5\] is too short",
        ),
        (
            {"datasets": {"demo": {"normalisation": "sigma-clip"}}},
            r"experiments.demo.training.augmentation.spectral.p: .* sigma-clip normalisation",
        ),
        (
            {"experiments": {"demo": {"training": {"optimizer": {"betas": [0.9, 1.0]}}}}},
            "experiments.demo.training.optimizer.betas.1: 1.0 is greater than or equal to the maximum of 1",
        ),
        (
            {"datasets": {"demo": {"patch_size": 16}}, "experiments": {"demo": {"training": {"batch_size": 1}}}},
            r"experiments.demo.training.batch_size: 1 with patches of 16 px \(datasets.demo.patch_size\) .* batch normalisation needs two",
        ),
        (
            {"experiments": {"demo": {"inference": {"overlap": 0.99}}}},
            "experiments.demo.inference.overlap: 0.99 is greater than the maximum of 0.75",
        ),
        (
            {"datasets": {"demo": {"clases": {"snow": [1]}}}},
            r"unknown key 'datasets.demo.clases' \(did you mean 'classes'\?\)",
        ),
        (
            {"datasets": {"demo": {"classes": {"snow": [255]}}}},
            "datasets.demo.classes.snow.0: 255 is greater than the maximum of 254",
        ),
        ({"datasets": {"demo": {"classes": {"snow": 1}}}}, "datasets.demo.classes.snow: 1 should be of type array"),
        (
            {"datasets": {"demo": {"classes": {"snow": [1], "ice": [1]}}}},
            "datasets.demo: label value 1 belongs to both snow and ice",
        ),
        (
            {"datasets": {"demo": {"ignored_classes": {"snow": [5]}}}},
            r"datasets.demo.classes / ignored_classes: class names \['snow'\]",
        ),
        (
            {"dem": "dem/T{tiles}.tif"},
            r"dem: unknown placeholder\(s\) \{tiles\} in 'dem/T\{tiles\}.tif' \(allowed: \{tile\}\)",
        ),
        (
            {"labels": "labels/{tile}/{data}.tif"},
            r"labels: unknown placeholder\(s\) \{data\} .* \(allowed: \{tile\}, \{date\}\)",
        ),
        ({"labels": "labels/{tile/{date}.tif"}, r"labels: 'labels/\{tile/\{date\}.tif' is not a valid pattern"),
    ],
)
def test_settings_that_cannot_work_are_refused_naming_the_key(default_config, change, message):
    """Ordered pairs, bounds, and placeholders: what the schema's types cannot say, checked before a run."""
    with pytest.raises(ConfigError, match=message):
        validate_config(merge_into(default_config, change))


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("preprocess:\n  resampling: cubic\n   clip: {method: none\n")
    with pytest.raises(ConfigError, match=rf"{broken}: not valid YAML at line 3, column \d+: "):
        load_config(broken)
