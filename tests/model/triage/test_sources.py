"""Readers for the JSRT and TBX11K layouts and the derived 'Lung Opacity' target (tiny folders made here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from radtriage.model.datasets import DatasetError, LabelledImage
from radtriage.model.sources import LUNG_OPACITY, read_source, triage_labels


def _folder(root: Path, name: str, header: str, rows: list[str]) -> Path:
    folder = root / name
    (folder / "images").mkdir(parents=True)
    (folder / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    for row in rows:
        (folder / row.split(",")[0]).write_bytes(b"x")
    return folder


def test_jsrt_non_nodule_films_are_negatives_and_nodules_are_not_opacities(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "jsrt", "image,patient_id,view,Nodule,no_nodule",
                     ["images/JPCLN001.png,JPCLN001,PA,1,0", "images/JPCNN001.png,JPCNN001,PA,0,1"])
    nodule, normal = read_source(folder)
    assert nodule.labels == {"Nodule": 1.0, "Pneumonia": 0.0} and nodule.patient_id == "jsrt:JPCLN001"
    assert normal.labels[LUNG_OPACITY] == 0.0 and normal.labels["Pneumonia"] == 0.0


def test_tbx11k_films_are_their_own_patients_and_acute_opacities(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "tbx11k-tb", "image,label,tb_type",
                     ["images/tb1.jpg,tuberculosis,active", "images/tb2.jpg,tuberculosis,obsolete"])
    images = read_source(folder)
    assert [im.labels for im in images] == [{LUNG_OPACITY: 1.0}] * 2
    assert len({im.patient_id for im in images}) == 2 and "Pneumonia" not in images[0].labels


def test_missing_image_or_bad_label_is_a_dataset_error(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "jsrt", "image,patient_id,view,Nodule,no_nodule", ["images/a.png,a,PA,2,0"])
    with pytest.raises(DatasetError, match="Nodule must be 0 or 1"):
        read_source(folder)
    (folder / "images" / "a.png").unlink()
    (folder / "labels.csv").write_text("image,patient_id,view,Nodule,no_nodule\nimages/a.png,a,PA,1,0\n")
    with pytest.raises(DatasetError, match="missing"):
        read_source(folder)


@pytest.mark.parametrize(("source", "labels", "abnormal", "opacity"), [
    ("nih", {"Pneumonia": 1.0}, 1.0, 1.0),
    ("nih", {"Pneumonia": 0.0}, 0.0, 0.0),
    ("covid", {}, 1.0, 1.0),  # ARDS: abnormal, not labelled pneumonia
    ("covid", {}, None, None),  # "todo": nothing known
])
def test_lung_opacity_follows_the_sources_own_labels(source: str, labels: dict, abnormal: float | None,
                                                     opacity: float | None) -> None:
    image = LabelledImage(Path("x.png"), f"{source}:x", f"{source}:1", source, labels, abnormal)
    assert triage_labels(image).labels.get(LUNG_OPACITY) == opacity
