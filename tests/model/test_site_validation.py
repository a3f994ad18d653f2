"""`radtriage model validate-site` (issue 10, site acceptance): the sample readers, the metrics, and the command
on a bounded sample of ../shared/data (skipped without it) and on pydicom-data's real DICOM files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score
from sqlalchemy import select

from radtriage.app.storage import create_database_engine, migrate
from radtriage.app.storage.tables import site_validations
from radtriage.cli import main
from radtriage.model.artefact import read_manifest
from radtriage.model.placeholder import ensure_placeholder
from radtriage.model.scorer import XrvScorer
from radtriage.model.site_validation import (
    LabelledImage,
    expected_calibration_error,
    load_sample,
    recommended_operating_points,
    validate_site,
)
from radtriage.monitoring.site_gate import SiteAcceptance, SiteGate
from tests.support.data import pydicom_data_dir

# ---------------------------------------------------------------------------------------------- samples


def test_a_csv_with_a_label_column(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("path,label\na.png,normal\nb.png,abnormal\nc.png,1\nd.png,0\n")
    cases = load_sample(tmp_path / "labels.csv")
    assert [(c.path.name, c.abnormal) for c in cases] == [("a.png", False), ("b.png", True), ("c.png", True),
                                                         ("d.png", False)]  # fmt: skip
    assert cases[0].path == tmp_path / "a.png"  # relative to the CSV's folder


def test_a_csv_shaped_like_the_shared_labels_uses_no_finding(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("image,view,Pneumonia,no_finding\ni/1.png,PA,1,0\ni/2.png,AP,0,1\n")
    assert [c.abnormal for c in load_sample(tmp_path / "labels.csv")] == [True, False]


@pytest.mark.parametrize(
    ("text", "message"),
    [("label\n1\n", "no image path column"), ("image,view\na.png,PA\n", "no label column"),
     ("image,label\n,1\n", "empty image path")],
)  # fmt: skip
def test_a_csv_that_cannot_be_used_says_why(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "s.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_sample(tmp_path / "s.csv")


def test_a_folder_needs_normal_and_abnormal(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="normal/ and abnormal/"):
        load_sample(tmp_path)


def test_a_limit_takes_a_seeded_balanced_sample(tmp_path: Path) -> None:
    rows = "\n".join(f"{n}.png,{int(n % 4 == 0)}" for n in range(40))
    (tmp_path / "s.csv").write_text(f"file,label\n{rows}\n")
    first = load_sample(tmp_path / "s.csv", limit=8)
    assert sum(c.abnormal for c in first) == 4 and len(first) == 8
    assert first == load_sample(tmp_path / "s.csv", limit=8)  # reproducible


# ---------------------------------------------------------------------------------------------- metrics


def test_ece_is_zero_when_calibrated_and_the_gap_otherwise() -> None:
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(y, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.0)
    # Everything predicted 0.95 while half are positive: one bin, gap 0.45.
    assert expected_calibration_error(y, np.full(4, 0.95)) == pytest.approx(0.45)
    # Two bins: 0.05 for the negatives (rate 0, gap 0.05), 0.95 for the positives (rate 1, gap 0.05).
    assert expected_calibration_error(y, np.array([0.05, 0.95, 0.05, 0.95])) == pytest.approx(0.05)


def test_operating_points_reach_their_target_sensitivity() -> None:
    rng = np.random.default_rng(1)
    y = np.array([0] * 50 + [1] * 50)
    p = np.clip(np.concatenate([rng.normal(0.3, 0.15, 50), rng.normal(0.7, 0.15, 50)]), 0, 1)
    for point in recommended_operating_points(y, p, (0.9, 0.95)):
        flagged = p >= point["abnormality_threshold"]
        assert point["sensitivity"] == pytest.approx(flagged[y == 1].mean())
        assert point["specificity"] == pytest.approx((~flagged[y == 0]).mean())
    targets = recommended_operating_points(y, p, (0.9, 0.95))[:2]
    assert targets[0]["sensitivity"] >= 0.9 and targets[1]["sensitivity"] >= 0.95
    assert recommended_operating_points(np.zeros(5, dtype=int), np.full(5, 0.2)) == []


# ---------------------------------------------------------------------------------------------- real images


@pytest.fixture(scope="module")
def placeholder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_placeholder(tmp_path_factory.mktemp("models"))


def test_pydicom_data_files_refused_by_the_gates_are_counted_not_scored(placeholder: Path) -> None:
    """Real DICOM: two adult chest CRs (normal/) and a tibia CR and an MR (abnormal/): only chests are scored."""
    data = pydicom_data_dir()
    cases = [LabelledImage(data / "RG1_J2KI.dcm", False), LabelledImage(data / "RG1_UNCR.dcm", False),
             LabelledImage(data / "RG3_J2KI.dcm", True), LabelledImage(data / "MR2_J2KI.dcm", True)]  # fmt: skip
    report = validate_site(XrvScorer.from_artefact(placeholder, max_threads=None), cases, bootstrap=20)
    assert (report["n"], report["n_scored"], report["n_normal"], report["n_abnormal"]) == (4, 2, 2, 0)
    assert report["not_analysed"] == {"not-a-chest": 1, "not-a-radiograph": 1}
    assert report["auroc"] == {"value": None, "ci95": None}
    assert report["sensitivity"]["value"] is None
    assert report["specificity"]["value"] == 1.0  # the placeholder's 0.05 flags nothing
    assert "not computable" in report["summary"]["auroc"]


def test_the_command_refuses_to_record_a_sample_without_both_classes(tmp_path: Path, placeholder: Path) -> None:
    data = pydicom_data_dir()
    (tmp_path / "site" / "normal").mkdir(parents=True)
    (tmp_path / "site" / "abnormal").mkdir()
    shutil.copy(data / "RG1_J2KI.dcm", tmp_path / "site" / "normal")
    shutil.copy(data / "RG3_J2KI.dcm", tmp_path / "site" / "abnormal")
    env = {"RADTRIAGE_HOME": str(tmp_path / "home"), "RADTRIAGE_MODEL": str(placeholder)}
    result = CliRunner(env=env).invoke(main, ["model", "validate-site", str(tmp_path / "site"), "--bootstrap", "10"])
    assert result.exit_code != 0
    assert "not-a-chest 1" in result.output and "not recorded: 1 normal and 0 abnormal" in result.output
    (tmp_path / "home").mkdir(exist_ok=True)
    engine = create_database_engine(f"sqlite:///{tmp_path / 'home' / 'radtriage.sqlite3'}")
    migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(select(site_validations)).all() == []


def test_the_command_on_a_bounded_sample_of_the_shared_data_records_and_ends_shadow(
    tmp_path: Path, shared_data: Path
) -> None:
    """16 NIH films (8 normal, 8 pneumonia) scored by the shipped model (its input gates may refuse one or two);
    recorded, audited, and shadow mode "auto" is then off for that model."""
    from radtriage.model.registry import SHIPPED_DEFAULT

    home = tmp_path / "home"
    env = {"RADTRIAGE_HOME": str(home)}
    args = ["model", "validate-site", str(shared_data / "cxr" / "nih" / "labels.csv"), "--limit", "16",
            "--bootstrap", "200", "--min-per-class", "5", "--by", "site physicist"]  # fmt: skip
    result = CliRunner(env=env).invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "images: 16 (" in result.output
    assert "AUROC (abnormality score):" in result.output and "95% CI" in result.output
    assert "recorded site validation" in result.output
    model = read_manifest(SHIPPED_DEFAULT).identity
    engine = create_database_engine(f"sqlite:///{home / 'radtriage.sqlite3'}")
    acceptance = SiteAcceptance(engine)
    stored = acceptance.latest_validation(model.sha256)
    assert stored is not None and stored.recorded_by == "site physicist"
    assert stored.n == stored.metrics["n_scored"] == 16 - sum(stored.metrics["not_analysed"].values()) >= 10
    auroc = stored.metrics["auroc"]
    assert 0.0 <= auroc["ci95"][0] <= auroc["value"] <= auroc["ci95"][1] <= 1.0
    assert SiteGate(acceptance, "auto").reason(model) is None  # validated: the model now acts
    status = CliRunner(env=env).invoke(main, ["model", "shadow", "status"])
    assert "now: ACTIVE" in status.output and f"n={stored.n}" in status.output


def test_the_reported_auroc_is_scikit_learn_s(placeholder: Path, shared_data: Path) -> None:
    cases = load_sample(shared_data / "cxr" / "nih" / "labels.csv", limit=8)
    scorer = XrvScorer.from_artefact(placeholder, max_threads=None)
    report = validate_site(scorer, cases, bootstrap=10)
    from radtriage.model.policy import default_policy
    from radtriage.model.site_validation import score_sample

    scored, _ = score_sample(scorer, default_policy(), cases)
    y = [int(s["abnormal"]) for s in scored]
    p = [s["score"] for s in scored]
    assert report["auroc"]["value"] == pytest.approx(roc_auc_score(y, p))
