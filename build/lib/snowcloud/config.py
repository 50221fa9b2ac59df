"""Configuration: loading, merging presets, validation against src/snowcloud/schema.yaml with defaults filled in."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterator, Mapping
from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("schema.yaml")  # ships with the package


class ConfigError(ValueError):
    """A configuration that does not match the schema; the message names the key and the problem."""


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def load_config(*paths: str | Path) -> dict:
    """Read YAML files and merge them in order, later ones winning key by key (as `--configfile` does)."""
    config: dict = {}
    for path in paths:
        with open(path) as handle:
            merge_into(config, yaml.safe_load(handle) or {})
    return validate_config(config)


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
    errors += _cross_reference_errors(config) if not errors else []
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
    return config


def _cross_reference_errors(config: dict) -> list[str]:
    errors = []
    datasets = config.get("datasets", {})
    experiments = config.get("experiments", {})
    for name, experiment in experiments.items():
        if experiment["dataset"] not in datasets:
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


def experiments_to_run(config: dict) -> list[str]:
    return list(config["run"] or config["experiments"])
