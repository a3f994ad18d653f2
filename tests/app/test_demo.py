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
    codes = ("routine", "urgent", "asap", "stat")
    rows = [line.split() for line in worklist.splitlines() if line.startswith("  ") and line.split()[0] in codes]
    # Most urgent first, and the STAT order stays STAT whatever the model says.
    priorities = [r[0] for r in rows]
    assert priorities[0] == "stat" and len(priorities) == 2
    assert "ordered STAT" in next(line for line in worklist.splitlines() if line.startswith("  stat"))
    # No site validation is recorded in a fresh home: shadow mode, and the demo says what the model would have
    # done. The routine order keeps its priority (shadow mode raises nothing).
    assert "SHADOW MODE (no site validation recorded for model" in worklist
    assert "model would set" in worklist
    routine = next(r for r in rows if "Adult" in r)
    assert routine[0] == "routine" and routine[1] in codes  # order's priority, then the model's
    # Every finding the default policy names but the model lacks is listed as not assessed.
    assert "NOT ASSESSED by this model" in worklist and "Pneumothorax" in worklist
    for code in ("not-a-chest", "not-a-radiograph", "lateral-only", "study-not-found"):
        assert code in not_analysed
    assert '"resourceType": "DiagnosticReport"' in out
    assert '"resourceType": "Task"' in out
    ndjson = (tmp_path / "fhir-resources.ndjson").read_text().splitlines()
    assert len(ndjson) >= 6


def test_demo_with_shadow_mode_off_acts_on_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADTRIAGE_SHADOW_MODE", "off")
    result = CliRunner().invoke(main, ["demo", "--home", str(tmp_path), "--show-fhir", "0"])
    assert result.exit_code == 0, result.output
    worklist = result.output.rsplit("WORKLIST", 1)[1]
    assert "SHADOW MODE" not in worklist and "model would set" not in worklist
    assert "not-a-chest" in worklist  # the not-analysed cases are there in either mode


def test_demo_on_a_folder_of_png_images(tmp_path: Path, shared_data: Path) -> None:
    result = CliRunner().invoke(
        main, ["demo", "--home", str(tmp_path / "home"), "--images", str(shared_data / "cxr" / "nih"), "--limit", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "WORKLIST" in result.output
    assert "NOT ANALYSED" not in result.output
