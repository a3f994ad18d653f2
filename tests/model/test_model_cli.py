"""`radtriage score` and `radtriage model show`: errors are one line with a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from radtriage.cli import main
from radtriage.model.evaluation.score_files import DEFAULT_MODEL_DIR


def test_score_on_an_empty_folder_fails_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["score", str(tmp_path)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "no image files" in result.output and len(result.output.strip().splitlines()) == 1


def test_model_show_on_a_folder_that_is_not_a_model_fails_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["model", "show", str(tmp_path)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "is not a model artefact" in lines[0]


def test_model_show_lists_assessed_and_not_assessed_findings(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["model", "show", str(DEFAULT_MODEL_DIR)],
                                env={"RADTRIAGE_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assessed = next(line for line in result.output.splitlines() if line.startswith("assessed findings:"))
    missing = next(line for line in result.output.splitlines() if line.startswith("policy findings NOT ASSESSED"))
    assert "Pneumonia" in assessed and "Pneumothorax" in missing
