"""Dataset adapters, the labelling command, and refusals that name the file and the problem."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from radtriage.model.datasets import (
    DatabaseLabelledStudies,
    DatasetError,
    covid_labels,
    from_xrv_dataset,
    read_labelled_folder,
    report_labels_table,
    set_label,
)

from .conftest import make_ext_folder, make_site_folder


def test_labels_csv_layout(tmp_path: Path) -> None:
    images = read_labelled_folder(make_site_folder(tmp_path, patients=4))
    assert len(images) == 8
    normal, abnormal = images[0], images[2]
    assert normal.source == "site" and normal.patient_id == "site:0" and normal.image_id == "site:images/000_0.png"
    assert normal.abnormal == 0.0 and normal.labels == {"Pneumonia": 0.0, "Effusion": 0.0}
    assert abnormal.abnormal == 1.0 and abnormal.labels["Pneumonia"] == 1.0
    assert abnormal.sex == "F" and abnormal.age == 31.0


def test_covid_layout_with_severity_and_unknowns(tmp_path: Path) -> None:
    images = {i.image_id: i for i in read_labelled_folder(make_ext_folder(tmp_path))}
    first = images["ext:images/e0.jpg"]
    assert first.labels == {"Pneumonia": 1.0} and first.abnormal == 1.0
    assert first.severity == {"geographic_extent_mean": 4.5, "opacity_mean": 3.0}
    assert images["ext:images/e3.jpg"].abnormal == 0.0  # "No Finding"
    assert images["ext:images/e4.jpg"].labels == {} and images["ext:images/e4.jpg"].abnormal is None  # "todo"
    assert images["ext:images/e1.jpg"].view_group == "AP"  # "AP Supine"


def test_covid_findings_map_to_torchxrayvision_labels() -> None:
    assert covid_labels("COVID-19, ARDS") == ({"Pneumonia": 1.0}, 1.0)
    assert covid_labels("ARDS") == ({}, 1.0)  # abnormal, but not labelled pneumonia
    assert covid_labels("Lipoid") == ({"Pneumonia": 1.0}, 1.0)
    assert covid_labels("todo") == ({}, None)


def _rewrite(path: Path, edit) -> None:  # noqa: ANN001
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    edit(rows)
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_missing_column_is_refused_with_the_file_name(tmp_path: Path) -> None:
    folder = make_site_folder(tmp_path, patients=2)
    _rewrite(folder / "labels.csv", lambda rows: [row.pop(1) for row in rows])
    with pytest.raises(DatasetError, match=r"labels\.csv: missing column\(s\) patient_id"):
        read_labelled_folder(folder)


def test_unknown_label_is_refused(tmp_path: Path) -> None:
    folder = make_site_folder(tmp_path, patients=2)
    _rewrite(folder / "labels.csv", lambda rows: [row.append("Broken Heart" if i == 0 else "0")
                                                   for i, row in enumerate(rows)])
    with pytest.raises(DatasetError, match="unknown label column.*Broken Heart"):
        read_labelled_folder(folder)


def test_bad_value_is_refused_with_row_and_column(tmp_path: Path) -> None:
    folder = make_site_folder(tmp_path, patients=2)

    def edit(rows: list[list[str]]) -> None:
        rows[2][rows[0].index("Effusion")] = "maybe"

    _rewrite(folder / "labels.csv", edit)
    with pytest.raises(DatasetError, match="row 3, column Effusion"):
        read_labelled_folder(folder)


def test_missing_image_is_refused(tmp_path: Path) -> None:
    folder = make_site_folder(tmp_path, patients=2)
    (folder / "images" / "001_1.png").unlink()
    with pytest.raises(DatasetError, match="missing, first images/001_1.png"):
        read_labelled_folder(folder)


def test_set_label_corrects_and_keeps_the_row_consistent(tmp_path: Path) -> None:
    folder = make_site_folder(tmp_path, patients=2)
    labels_csv = folder / "labels.csv"
    change = set_label(labels_csv, "images/000_0.png", "Effusion", 1)
    assert (change.before, change.after, change.added_row) == (0.0, 1.0, False)
    image = next(i for i in read_labelled_folder(folder) if i.image_id == "site:images/000_0.png")
    assert image.labels["Effusion"] == 1.0 and image.abnormal == 1.0
    with labels_csv.open() as fh:
        row = next(r for r in csv.DictReader(fh) if r["image"] == "images/000_0.png")
    assert row["no_finding"] == "0" and row["finding_labels"] == "Effusion"


def test_set_label_adds_a_new_finding_column_and_a_new_image(tmp_path: Path) -> None:
    folder = make_site_folder(tmp_path, patients=2)
    labels_csv = folder / "labels.csv"
    (folder / "images" / "new.png").write_bytes((folder / "images" / "000_0.png").read_bytes())
    change = set_label(labels_csv, "images/new.png", "pneumothorax", "1", patient_id="99")
    assert change.added_row and change.label == "Pneumothorax"
    image = next(i for i in read_labelled_folder(folder) if i.image_id == "site:images/new.png")
    assert image.patient_id == "site:99" and image.labels == {"Pneumothorax": 1.0}


def test_set_label_refusals(tmp_path: Path) -> None:
    labels_csv = make_site_folder(tmp_path, patients=2) / "labels.csv"
    before = labels_csv.read_bytes()
    with pytest.raises(DatasetError, match="unknown label 'Sadness'"):
        set_label(labels_csv, "images/000_0.png", "Sadness", 1)
    with pytest.raises(DatasetError, match="not listed; give its patient id"):
        set_label(labels_csv, "images/nope.png", "Effusion", 1)
    with pytest.raises(DatasetError, match="expected 0, 1 or empty"):
        set_label(labels_csv, "images/000_0.png", "Effusion", 7)
    assert labels_csv.read_bytes() == before


def test_database_adapter_reads_report_labels(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, insert

    engine = create_engine(f"sqlite:///{tmp_path / 'labels.db'}")
    table = report_labels_table()
    table.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(insert(table), [
            {"study_instance_uid": "1.2.3", "patient_ref": "Patient/abc", "image_path": "a.dcm", "view": "PA",
             "sex": "F", "age": 61.0, "label": "Effusion", "value": 1.0},
            {"study_instance_uid": "1.2.3", "patient_ref": "Patient/abc", "image_path": "a.dcm", "view": "PA",
             "sex": "F", "age": 61.0, "label": "Pneumothorax", "value": 0.0},
            {"study_instance_uid": "1.2.4", "patient_ref": "Patient/abc", "image_path": "b.dcm", "view": "AP",
             "sex": "F", "age": 62.0, "label": "abnormal", "value": 0.0},
        ])
    images = DatabaseLabelledStudies(engine, tmp_path).labelled_images()
    by_id = {i.image_id: i for i in images}
    assert by_id["radtriage:1.2.3"].labels == {"Effusion": 1.0, "Pneumothorax": 0.0}
    assert by_id["radtriage:1.2.3"].abnormal == 1.0 and by_id["radtriage:1.2.4"].abnormal == 0.0
    # Both studies belong to one patient, whose reference does not leave the adapter.
    assert by_id["radtriage:1.2.3"].patient_id == by_id["radtriage:1.2.4"].patient_id
    assert "abc" not in by_id["radtriage:1.2.3"].patient_id


@pytest.mark.shared_data
def test_shared_data_folders(shared_data: Path) -> None:
    nih = read_labelled_folder(shared_data / "cxr" / "nih")
    covid = read_labelled_folder(shared_data / "cxr" / "covid")
    assert (len(nih), len({i.patient_id for i in nih})) == (850, 574)
    assert (len(covid), len({i.patient_id for i in covid})) == (501, 305)
    assert sum(i.abnormal == 1.0 for i in nih) == 425
    assert sum(bool(i.severity) for i in covid) == 94
    assert sum(i.abnormal is None for i in covid) == 62


@pytest.mark.shared_data
def test_torchxrayvision_dataset_keeps_only_local_images(shared_data: Path) -> None:
    from radtriage.model._xrv import import_xrv

    xrv = import_xrv()
    dataset = xrv.datasets.NIH_Dataset(imgpath=str(shared_data / "cxr" / "nih" / "images"), views=["PA", "AP"],
                                       unique_patients=False)
    images = from_xrv_dataset(dataset, "nih-xrv")
    assert len(images) == 850
    ours = {i.image_id.split("/")[-1]: i for i in read_labelled_folder(shared_data / "cxr" / "nih")}
    for image in images[:50]:
        mine = ours[image.image_id.split(":")[-1]]
        assert image.labels["Pneumonia"] == mine.labels["Pneumonia"]
        assert image.patient_id.split(":")[-1] == mine.patient_id.split(":")[-1]
