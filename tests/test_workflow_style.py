"""The workflow follows the Snakemake catalog's habits: snakefmt-formatted and `snakemake --lint` clean."""

import shutil
import subprocess
import sys


def test_rule_files_are_snakefmt_formatted(repo):
    files = [repo / "Snakefile", *sorted((repo / "workflow" / "rules").glob("*.smk"))]
    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", *map(str, files)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_snakemake_lint_is_clean(repo, tmp_path):
    (tmp_path / "config").mkdir()
    shutil.copy(repo / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(tmp_path), "--lint"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
