import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import rasterio
import yaml
from helpers.workflow_runs import snakemake, tiny_config, write_config

from snowcloud import normalisation
from snowcloud.checkpoint import save_model
from snowcloud.cli import main
from snowcloud.labels import CLASSES
from snowcloud.model import build_model
from snowcloud.scene import channel_names


def test_check_config_accepts_a_preset_and_names_what_runs(repo, capsys):
    assert (
        main(["check-config", str(repo / "config" / "config.yaml"), str(repo / "config" / "presets" / "a82e3cd.yaml")])
        == 0
    )
    out = capsys.readouterr().out
    assert "configuration OK" in out and "experiments: a82e3cd" in out and "datasets: thesis-dynamic-world" in out


def test_check_config_reports_a_typo_and_fails(repo, tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"preprocess": {"resamplng": "cubic"}}))
    assert main(["check-config", str(repo / "config" / "config.yaml"), str(typo)]) == 1
    assert "unknown key 'preprocess.resamplng' (did you mean 'resampling'?)" in capsys.readouterr().err


def test_check_config_show_prints_the_defaults(repo, capsys):
    assert main(["check-config", "--show", str(repo / "config" / "config.yaml")]) == 0
    shown = yaml.safe_load(capsys.readouterr().out.split("configuration OK")[0])
    optimizer = shown["experiments"]["demo"]["training"]["optimizer"]
    assert optimizer["lr"] == 0.002  # set in the file
    assert optimizer["weight_decay"] == 0.01 and optimizer["amsgrad"] is False  # schema defaults filled in


def test_demo_command_makes_products_dems_and_labels(tmp_path, capsys):
    assert main(["demo", str(tmp_path), "--size", "60", "--tiles", "32TNS", "--dates", "20220201T102209"]) == 0
    products = list((tmp_path / "raw" / "T32TNS").glob("S2*_MSIL1C_20220201T102209_N0400_*_T32TNS_*.SAFE.zip"))
    assert len(products) == 1
    with rasterio.open(tmp_path / "labels" / "T32TNS" / "20220201T102209.tif") as label:
        assert (label.width, label.height, label.dtypes[0]) == (60, 60, "uint8")
    assert (tmp_path / "dem" / "T32TNS.tif").is_file()
    assert main(["info", str(products[0])]) == 0
    assert "processing baseline 04.00" in capsys.readouterr().out


def test_demo_command_refuses_a_size_that_is_not_a_multiple_of_6(tmp_path, capsys):
    assert main(["demo", str(tmp_path), "--size", "100"]) == 1
    assert "demo.size" in capsys.readouterr().err


def test_info_describes_a_model(tmp_path, capsys):
    model = build_model("unet", in_channels=14, n_classes=4, base_channels=4)
    metadata = {
        "architecture": "unet",
        "model_args": {"in_channels": 14, "n_classes": 4, "base_channels": 4},
        "bands": ["B01", "ELEVATION"],
        "normalisation": {"name": "legacy-dn10000", "version": 1},
    }
    save_model(tmp_path / "model.pt", model, metadata)
    assert main(["info", str(tmp_path / "model.pt")]) == 0
    out = capsys.readouterr().out
    assert "unet" in out and "normalisation: legacy-dn10000 version 1" in out and "bands: B01, ELEVATION" in out


def test_info_refuses_an_unknown_file(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["info", str(tmp_path / "notes.txt")]) == 1
    assert "not a file snowcloud knows" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["info", "--help"]])
def test_help_exits_cleanly(argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0


def test_check_config_and_demo_work_from_an_installed_wheel(repo, tmp_path):
    """The schema and the presets ship inside the package: the commands need no checkout beside the installed
    files."""
    source, wheels = tmp_path / "source", tmp_path / "wheels"
    shutil.copytree(
        repo, source, ignore=shutil.ignore_patterns(".*", "build", "results", "resources", "logs", "*.egg-info")
    )
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(wheels),
        str(source),
    ]
    subprocess.run(build, check=True, cwd=tmp_path, capture_output=True)  # in a copy: setuptools writes build/ beside
    (wheel,) = wheels.glob("snowcloud-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "snowcloud/schema.yaml" in archive.namelist() and "snowcloud/presets/a82e3cd.yaml" in archive.namelist()
        archive.extractall(tmp_path / "site")
    config = tmp_path / "config.yaml"
    config.write_text((repo / "config" / "config.yaml").read_text())
    environment = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    for arguments in (
        ["check-config", str(config)],
        ["demo", str(tmp_path / "demo"), "--size", "60", "--tiles", "32TNS", "--dates", "20220201T102209"],
    ):
        done = subprocess.run(
            [sys.executable, "-c", "import sys; from snowcloud.cli import main; sys.exit(main())", *arguments],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
    preset = "from snowcloud.thesis import preset_config; print(preset_config('a82e3cd')[1])"
    found = subprocess.run(
        [sys.executable, "-c", preset], cwd=tmp_path, env=environment, capture_output=True, text=True
    )
    assert found.stdout.strip() == "a82e3cd", found.stderr  # import-thesis --preset NAME outside the checkout
    imported = subprocess.run(
        [sys.executable, "-c", "import snowcloud; print(snowcloud.__file__)"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert imported.startswith(str(tmp_path / "site"))


def test_check_config_reports_a_yaml_syntax_error_without_a_traceback(repo, tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("dates: [20210116T102351\n")
    assert main(["check-config", str(repo / "config" / "config.yaml"), str(broken)]) == 1
    err = capsys.readouterr().err
    assert f"snowcloud check-config: {broken}: not valid YAML at line 2" in err and "Traceback" not in err


def test_check_config_reports_an_unknown_placeholder_in_a_path_pattern(repo, tmp_path, capsys):
    patterns = tmp_path / "patterns.yaml"
    patterns.write_text(yaml.safe_dump({"dem": "dem/{tile}_{resolution}.tif"}))
    assert main(["check-config", str(repo / "config" / "config.yaml"), str(patterns)]) == 1
    assert "dem: unknown placeholder(s) {resolution}" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_check_config_says_what_the_workflow_says_of_a_given_model_that_cannot_run(tmp_path, capsys, damage):
    model = tmp_path / "given.pt"
    save_model(
        model,
        build_model("unet", 14, 4, base_channels=4),
        {"architecture": "unet", "model_args": {"in_channels": 14, "n_classes": 4, "base_channels": 4}},
    )
    if damage == "missing":
        model.unlink()
    else:
        model.write_bytes(model.read_bytes()[:5000])  # a copy cut short
    config = write_config(
        tmp_path / "work", tiny_config({"experiments": {"given": {"model": str(model)}}, "run": ["given"]})
    )
    workflow = snakemake(tmp_path / "work", "--dry-run", "--cores", "1", check=False)
    (said,) = {line.strip() for line in workflow.output.splitlines() if line.strip().startswith("CheckpointError: ")}
    assert not workflow.ok and str(model) in said

    assert main(["check-config", str(config)]) == 1
    captured = capsys.readouterr()
    assert said.removeprefix("CheckpointError: ") in captured.err and "configuration OK" not in captured.out


def test_check_config_names_the_given_model_it_checked(tmp_path, capsys):
    model = tmp_path / "given.pt"
    args = {"in_channels": 14, "n_classes": 4, "base_channels": 4}
    save_model(
        model,
        build_model("unet", **args),
        {
            "architecture": "unet",
            "model_args": args,
            "patch_size": 64,
            "bands": channel_names(True),
            "normalisation": normalisation.spec(),
            "classes": list(CLASSES),
        },
    )
    config = write_config(
        tmp_path / "work", tiny_config({"experiments": {"given": {"model": str(model)}}, "run": ["given"]})
    )
    assert main(["check-config", str(config)]) == 0
    assert f"experiments.given.model: {model} (SHA-256 " in capsys.readouterr().out
