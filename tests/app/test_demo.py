"""`radtriage demo`, the README's main job, run as a user runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from radtriage.cli import main

pytestmark = pytest.mark.slow


def test_demo_prints_a_prioritised_worklist_and_fhir_resources(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "WORKLIST" in out
    worklist, not_analysed = out.rsplit("WORKLIST", 1)[1].split("NOT ANALYSED", 1)
    rows = [line.split() for line in worklist.splitlines() if line.startswith("  ") and "!!" not in line][1:]
    # Most urgent first, and the STAT order stays STAT whatever the model says.
    priorities = [r[0] for r in rows]
    assert priorities[0] == "stat" and len(priorities) == 2
    assert priorities[1] in ("routine", "urgent", "asap", "stat")
    assert "ordered STAT" in next(line for line in worklist.splitlines() if line.startswith("  stat"))
    for code in ("not-a-chest", "not-a-radiograph", "lateral-only", "study-not-found"):
        assert code in not_analysed
    assert '"resourceType": "DiagnosticReport"' in out
    assert '"resourceType": "Task"' in out
    ndjson = (tmp_path / "fhir-resources.ndjson").read_text().splitlines()
    assert len(ndjson) >= 6


def test_demo_on_a_folder_of_png_images(tmp_path: Path, shared_data: Path) -> None:
    result = CliRunner().invoke(
        main, ["demo", "--home", str(tmp_path / "home"), "--images", str(shared_data / "cxr" / "nih"), "--limit", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "WORKLIST" in result.output
    assert "NOT ANALYSED" not in result.output
