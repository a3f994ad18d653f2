"""The command line as an operator uses it: serve (both doors), the model registry, scoring files."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import hl7.client
import pytest
import requests
from click.testing import CliRunner

from radtriage.app.config import load_settings
from radtriage.app.factory import resolve_model_path
from radtriage.cli import main
from radtriage.model.placeholder import ensure_placeholder
from radtriage.model.registry import SHIPPED_DEFAULT
from tests.hl7.messages import orm
from tests.support.data import pydicom_data_dir
from tests.support.orthanc import free_loopback_port

FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
RG1_STUDY = "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"


def test_every_command_has_help() -> None:
    runner = CliRunner()
    commands = [[], ["demo"], ["serve"], ["mllp"], ["score"], ["label"], ["audit"], ["audit", "verify"]]
    commands += [["audit", "export"], ["model"]] + [["model", c] for c in ("list", "show", "activate", "train")]
    commands += [["model", c] for c in ("tune", "evaluate", "release")]
    for command in commands:
        result = runner.invoke(main, [*command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, command


@pytest.mark.slow
def test_serve_takes_orders_through_both_doors_and_stops_cleanly(tmp_path: Path) -> None:
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(pydicom_data_dir() / "RG1_J2KI.dcm", studies / "chest.dcm")
    http_port, mllp_port = free_loopback_port(), free_loopback_port()
    env = {
        **os.environ,
        "RADTRIAGE_HOME": str(tmp_path),
        "RADTRIAGE_PORT": str(http_port),
        "RADTRIAGE_MLLP_PORT": str(mllp_port),
        "RADTRIAGE_STUDY_FOLDER": str(studies),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "radtriage.cli", "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{http_port}/fhir"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/metadata", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            pytest.fail("serve did not answer within 60 s")
        study = {
            "resourceType": "ImagingStudy",
            "id": "cli-1",
            "status": "available",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{RG1_STUDY}"}],
            "subject": {"reference": "Patient/cli-1"},
        }
        created = requests.post(f"{base}/ImagingStudy", json=study, headers=FHIR_JSON, timeout=10)
        assert created.status_code == 201
        with hl7.client.MLLPClient("127.0.0.1", mllp_port) as client:
            # Another study: one study belongs to one order, whichever door it came through (that is AE 205).
            ack = client.send_message(orm("CLI0001", study_uid="1.2.826.0.1.3680043.10.543.7777", placer="CLI1"))
        assert "MSA|AA|CLI0001" in ack.decode("latin-1")
        task_id = created.json()["id"]
        while time.monotonic() < deadline:
            task = requests.get(f"{base}/Task/{task_id}", headers=FHIR_JSON, timeout=10).json()
            if task["status"] in ("completed", "failed"):
                break
            time.sleep(0.2)
        assert task["status"] == "completed"
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode in (0, -signal.SIGINT, 130, 1), output
    assert b"Traceback" not in output or b"KeyboardInterrupt" in output


def test_the_registry_activates_a_verified_model_and_refuses_a_tampered_one(tmp_path: Path) -> None:
    env = {"RADTRIAGE_HOME": str(tmp_path), "RADTRIAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    runner = CliRunner(env=env)
    placeholder = ensure_placeholder(tmp_path / "models")
    settings = load_settings(env=env)
    assert resolve_model_path(settings) == SHIPPED_DEFAULT

    result = runner.invoke(main, ["model", "activate", str(placeholder)])
    assert result.exit_code == 0, result.output
    assert resolve_model_path(load_settings(env=env)) == placeholder.resolve()
    listed = runner.invoke(main, ["model", "list"]).output
    active_line = next(line for line in listed.splitlines() if line.startswith("*"))
    assert "untrained-placeholder" in active_line

    tampered = tmp_path / "tampered"
    shutil.copytree(placeholder, tampered)
    weights = tampered / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    refused = runner.invoke(main, ["model", "activate", str(tampered)])
    assert refused.exit_code != 0
    assert resolve_model_path(load_settings(env=env)) == placeholder.resolve()

    export = runner.invoke(main, ["audit", "export", "--format", "ndjson"])
    assert export.exit_code == 0 and "model-changed" in export.output


def test_score_writes_one_row_per_file_and_says_what_it_could_not_analyse() -> None:
    files = [str(pydicom_data_dir() / name) for name in ("RG1_J2KI.dcm", "RG3_J2KI.dcm")]
    result = CliRunner().invoke(main, ["score", *files, "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [Path(r["file"]).name for r in rows] == ["RG1_J2KI.dcm", "RG3_J2KI.dcm"]
    assert rows[0]["not_analysed"] == "" and rows[0]["priority"] in ("routine", "urgent", "asap", "stat")
    assert "not-a-chest" in rows[1]["not_analysed"]


def test_retention_purges_old_results_keeps_orders_and_audits_it(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from radtriage.app.core.domain import ImagingOrder
    from radtriage.app.factory import build_components
    from radtriage.app.storage.tables import results

    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(pydicom_data_dir() / "RG1_J2KI.dcm", studies)
    env = {"RADTRIAGE_HOME": str(tmp_path), "RADTRIAGE_STUDY_FOLDER": str(studies), "RADTRIAGE_RETENTION_DAYS": "30"}
    components = build_components(load_settings(env=env))
    components.start()
    order = ImagingOrder(study_instance_uid=RG1_STUDY, patient_ref="Patient/old", source="fhir", source_key="old")
    _, job, _ = components.service.submit_order(order)
    assert components.queue.wait_idle(timeout=120)
    with components.engine.begin() as conn:  # as if it had been scored 40 days ago
        conn.execute(update(results).values(created_at=datetime.now(UTC) - timedelta(days=40)))
    components.close()

    runner = CliRunner(env=env)
    dry = runner.invoke(main, ["retention", "--dry-run"])
    assert dry.exit_code == 0 and "results: 1 item(s) would be removed" in dry.output
    done = runner.invoke(main, ["retention"])
    assert done.exit_code == 0 and "results: 1 item(s) removed" in done.output
    again = runner.invoke(main, ["retention"])
    assert "results: 0 item(s) removed" in again.output

    components = build_components(load_settings(env=env))
    try:
        assert components.store.get_result(job.id) is None
        assert components.store.get_job(job.id) is not None  # the order and its job are the record: kept
        assert components.audit.verify().ok
    finally:
        components.close()
    export = runner.invoke(main, ["audit", "export", "--format", "ndjson"])
    assert export.output.count("retention-purge") >= 3
