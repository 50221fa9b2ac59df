"""Configuration: loading, merging presets, validation against src/snowcloud/schema.yaml with defaults filled in."""

from __future__ import annotations

import copy
import difflib
import functools
import string
from collections.abc import Iterator, Mapping
from pathlib import Path

import jsonschema
import yaml

from snowcloud.labels import ClassSet, ClassSetError

SCHEMA_PATH = Path(__file__).with_name("schema.yaml")  # ships with the package


PATTERN_PLACEHOLDERS = {"dem": ("tile",), "labels": ("tile", "date")}  # what inventory.scene_path fills in
UNET_MIN_PATCH_FOR_ONE = 32  # smallest patch whose 4 times halved bottleneck keeps 2 x 2 values for batch norm

# The preprocess options that change the values of a scene raster (the others change only how it is stored, or
# whether it is accepted): what a model records of its training scenes and what inference must repeat.
SCENE_VALUE_OPTIONS = ("resampling", "cubic_a", "clip", "dem", "dem_resampling")


class ConfigError(ValueError):
    """A configuration that does not match the schema; the message names the key and the problem."""


@functools.cache
def load_schema(path: Path = SCHEMA_PATH) -> dict:
    """The configuration schema, parsed once per process (shared by every caller: read it, never modify it)."""
    with open(path) as handle:
        return yaml.safe_load(handle)


def load_config(*paths: str | Path) -> dict:
    """Read YAML files and merge them in order, later ones winning key by key (as `--configfile` does)."""
    config: dict = {}
    for path in paths:
        merge_into(config, read_yaml(path))
    return validate_config(config)


def read_yaml(path: str | Path) -> dict:
    """One configuration file as a mapping; ConfigError naming the file (and line) when it is not one."""
    try:
        with open(path) as handle:
            content = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{path}: not valid YAML{line}: {problem}") from None
    if content is not None and not isinstance(content, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not a {type(content).__name__}")
    return content or {}


def merge_into(base: dict, update: Mapping) -> dict:
    """Deep-merge `update` into `base` in place: mappings merge, everything else replaces."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge_into(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _fill_defaults(validator_class: type) -> type:
    """A validator class that writes each property's schema default into the instance before checking it."""
    check_properties = validator_class.VALIDATORS["properties"]

    def properties(validator, properties, instance, schema):  # noqa: ANN001 - jsonschema's signature
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from check_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties})


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    where = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unexpected = sorted(set(error.instance) - set(allowed))
        parts = []
        for key in unexpected:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(allowed)})"
            full = f"{where}.{key}" if error.absolute_path else key
            parts.append(f"unknown key '{full}'{hint}")
        return "; ".join(parts)
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not one of {error.validator_value}"
    if error.validator == "type":
        return f"{where}: {error.instance!r} should be of type {error.validator_value}"
    return f"{where}: {error.message}"


def iter_errors(config: dict, schema: dict) -> Iterator[jsonschema.ValidationError]:
    validator = _fill_defaults(jsonschema.Draft202012Validator)(schema)
    yield from sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Check `config` against the schema, fill in defaults in place, and check cross-references."""
    schema = load_schema() if schema is None else schema
    errors = [_describe(error) for error in iter_errors(config, schema)]
    errors += _cross_reference_errors(config) + _range_errors(config) + _pattern_errors(config) if not errors else []
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
    if config.get("smoke", {}).get("enabled"):
        apply_smoke(config)
    return config


def apply_smoke(config: dict) -> dict:
    """Shrink every dataset and experiment to the `smoke` values (config/presets/smoke.yaml), in place."""
    smoke = config["smoke"]
    for dataset in config["datasets"].values():
        dataset["patch_size"] = smoke["patch_size"]
        dataset["sampler"]["patches_per_date"] = smoke["patches_per_date"]
        dataset["sampler"]["min_labelled_fraction"] = min(
            dataset["sampler"]["min_labelled_fraction"], smoke["min_labelled_fraction"]
        )
    for experiment in config["experiments"].values():
        experiment["inference"]["batch_size"] = smoke["batch_size"]
        if model_file(experiment) is not None:
            continue  # inference-only: nothing to train
        experiment["model"]["base_channels"] = smoke["base_channels"]
        training = experiment["training"]
        training.update(epochs=smoke["epochs"], batch_size=smoke["batch_size"], compile=False)
        training.update(steps_per_epoch=smoke["steps_per_epoch"], validation_steps=smoke["steps_per_epoch"])
        half = max(1, smoke["patch_size"] // 2)
        training["augmentation"]["erase_size"] = [min(side, half) for side in training["augmentation"]["erase_size"]]
        if experiment["thesis"]:
            experiment["thesis"]["validation_steps"] = smoke["steps_per_epoch"]
    return config


def _cross_reference_errors(config: dict) -> list[str]:
    errors = []
    datasets = config.get("datasets", {})
    experiments = config.get("experiments", {})
    for name, experiment in experiments.items():
        if model_file(experiment) is not None:
            if "dataset" in experiment:
                errors.append(
                    f"experiments.{name}: model is the path of a trained model.pt, so there is no dataset to "
                    "train on; remove dataset (or give model as the network to train)"
                )
            continue
        if "dataset" not in experiment:
            errors.append(
                f"experiments.{name}: give a dataset to train on, or model: path/to/model.pt to run a trained model"
            )
        elif experiment["dataset"] not in datasets:
            errors.append(
                f"experiments.{name}.dataset: '{experiment['dataset']}' is not a key of datasets "
                f"(known: {', '.join(sorted(datasets)) or 'none'})"
            )
    for name in config.get("run", []):
        if name not in experiments:
            errors.append(f"run: '{name}' is not a key of experiments (known: {', '.join(sorted(experiments))})")
    for name, dataset in datasets.items():
        if dataset["elevation"] and not config["preprocess"]["dem"]:
            errors.append(f"datasets.{name}.elevation is true but preprocess.dem is false: there is no DEM band")
    return errors


# Where each stage's options live in the schema (what `validated` checks them against).
SECTIONS: dict[str, tuple[str, ...]] = {
    "preprocess": ("properties", "preprocess"),
    "evaluation": ("properties", "evaluation"),
    "dataset": ("$defs", "dataset"),
    "experiment": ("$defs", "experiment"),
    "inference": ("$defs", "experiment", "properties", "inference"),
    "auto_labels": ("properties", "auto_labels"),
    "season": ("properties", "season"),
}


def validated(options: Mapping, section: str) -> dict:
    """A stage's options checked against their part of the schema, with every default filled in (a copy).

    Every stage function calls this first, so a call from Python gets the checks and defaults the workflow's
    start-up gives; errors name the key as `{section}.{key}`."""
    schema = load_schema()
    subschema: dict = schema
    for key in SECTIONS[section]:
        subschema = subschema[key]
    wrapper = {"type": "object", "properties": {section: subschema}, "$defs": schema.get("$defs", {})}
    return validate_config({section: copy.deepcopy(dict(options))}, wrapper)[section]


def scene_value_options(options: dict) -> dict:
    """The options among preprocess `options` (filled with defaults) that decide the values of a scene raster."""
    options = validated(options, "preprocess")
    return {key: options[key] for key in SCENE_VALUE_OPTIONS}


def recorded_value_options(recorded: dict | None) -> dict | None:
    """scene_value_options of recorded preprocess options (a scene raster's tag, `scene.recorded_preprocess`);
    None where none were recorded."""
    return None if recorded is None else scene_value_options(recorded)


def options_for_model(configured: dict, recorded: dict | None) -> dict | None:
    """Preprocess options for the scenes of a given model: None when the scenes made with the `configured`
    options serve (same values, or the model records none), else the configured options with the model's
    `recorded` value-deciding options over them."""
    if recorded is None or scene_value_options(recorded) == scene_value_options(configured):
        return None
    return validated({**configured, **scene_value_options(recorded)}, "preprocess")


def _range_errors(config: dict) -> list[str]:
    """Pairs that must be ordered, and settings that cannot work together, which the schema cannot express."""
    errors = []
    percentiles = config.get("preprocess", {}).get("clip", {}).get("percentiles")
    if percentiles and not percentiles[0] < percentiles[1]:
        errors.append(f"preprocess.clip.percentiles: {percentiles} must be [low, high] with low < high")
    datasets = config.get("datasets", {})
    for name, dataset in datasets.items():
        try:
            ClassSet.from_options(dataset, f"datasets.{name}")
        except ClassSetError as error:
            errors.append(str(error))
    for name, experiment in config.get("experiments", {}).items():
        training = experiment.get("training", {})
        erase_size = training.get("augmentation", {}).get("erase_size")
        if erase_size and not erase_size[0] <= erase_size[1]:
            errors.append(
                f"experiments.{name}.training.augmentation.erase_size: {erase_size} must be [smallest, largest]"
            )
        errors += _spectral_errors(name, training, datasets.get(experiment.get("dataset"), {}))
        patch_size = datasets.get(experiment.get("dataset"), {}).get("patch_size")
        if training.get("batch_size") == 1 and patch_size is not None and patch_size < UNET_MIN_PATCH_FOR_ONE:
            errors.append(
                f"experiments.{name}.training.batch_size: 1 with patches of {patch_size} px (datasets."
                f"{experiment['dataset']}.patch_size) leaves one value per channel at the U-Net's deepest level, "
                f"where batch normalisation needs two: use batch_size >= 2 or patch_size >= {UNET_MIN_PATCH_FOR_ONE}"
            )
    return errors


def _spectral_errors(name: str, training: dict, dataset: dict) -> list[str]:
    """Unordered spectral augmentation ranges, and a spectral augmentation a dataset's normalisation cannot invert."""
    spectral = training.get("augmentation", {}).get("spectral", {})
    key = f"experiments.{name}.training.augmentation.spectral"
    errors = [
        f"{key}.{option}: {value} must be [low, high] with low <= high"
        for option, value in spectral.items()
        if isinstance(value, list) and not value[0] <= value[1]
    ]
    if spectral.get("p") and dataset.get("normalisation") == "sigma-clip":
        errors.append(
            f"{key}.p: the spectral augmentation turns patches back into reflectance, which the dataset's "
            f"sigma-clip normalisation (per-scene statistics) does not allow: use another normalisation or p 0"
        )
    return errors


def _pattern_errors(config: dict) -> list[str]:
    """Path patterns may hold only the placeholders they are filled with."""
    errors = []
    for key, allowed in PATTERN_PLACEHOLDERS.items():
        if key not in config:
            continue
        try:
            fields = {field for _, field, _, _ in string.Formatter().parse(config[key]) if field is not None}
        except ValueError as error:
            errors.append(
                f"{key}: {config[key]!r} is not a valid pattern ({error}); write a literal brace as {{{{ or }}}}"
            )
            continue
        unknown = sorted(fields - set(allowed))
        if unknown:
            errors.append(
                f"{key}: unknown placeholder(s) {', '.join('{' + f + '}' for f in unknown)} in {config[key]!r} "
                f"(allowed: {', '.join('{' + f + '}' for f in allowed)})"
            )
    return errors


def experiments_to_run(config: dict) -> list[str]:
    return list(config["run"] or config["experiments"])


def model_file(experiment: dict) -> str | None:
    """The trained model.pt an inference-only experiment runs (`model` given as a path), else None."""
    return experiment["model"] if isinstance(experiment.get("model"), str) else None


def datasets_of(config: dict, experiments: list[str]) -> list[str]:
    """The datasets the given experiments train on (inference-only experiments have none)."""
    return sorted(
        {
            config["experiments"][name]["dataset"]
            for name in experiments
            if model_file(config["experiments"][name]) is None
        }
    )
