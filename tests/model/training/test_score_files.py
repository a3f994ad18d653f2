"""`radtriage score`: one row per image, not-analysed rows with the reason, CSV or JSON lines."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radtriage.imaging.dicom_pixels import pixels_for_display, read_dataset
from radtriage.model.evaluation.score_files import DEFAULT_MODEL_DIR, NoImagesError, score_files
from tests.support.data import pydicom_data_dir


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    (folder / "nested").mkdir(parents=True)
    # A real chest film (pydicom-data's adult chest CR) exported as PNG and JPEG, as a PACS viewer would: random
    # pixels would be (rightly) refused by the out-of-distribution gate.
    chest = pixels_for_display(read_dataset((pydicom_data_dir() / "RG1_J2KI.dcm").read_bytes()))
    film = Image.fromarray((chest * 255).astype(np.uint8)).resize((512, 543))
    film.save(folder / "a.png")
    film.save(folder / "nested" / "b.jpg", quality=90)
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("ignored: not an image")
    return folder


def test_csv_rows_for_images_and_failures(images: Path) -> None:
    out = io.StringIO()
    extremity = pydicom_data_dir() / "RG3_J2KI.dcm"
    count = score_files([images, extremity], out, max_threads=None)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert count == len(rows) == 4
    by_name = {Path(r["file"]).name: r for r in rows}
    assert set(by_name) == {"a.png", "b.jpg", "broken.png", "RG3_J2KI.dcm"}
    scored = by_name["a.png"]
    assert scored["not_analysed"] == "" and scored["priority"] in ("routine", "urgent", "asap", "stat")
    extra = ("file", "abnormality", "priority", "model_version", "not_analysed", "severity", "not_assessed")
    labels = [c for c in rows[0] if c not in extra]
    assert list(rows[0])[-2:] == ["severity", "not_assessed"]
    assert labels and float(scored["abnormality"]) == max(float(scored[label]) for label in labels)
    assert 0.0 <= float(scored["severity"]) <= 8.0
    # The default policy's STAT rule names Pneumothorax, which the model cannot assess: every row says so.
    assert all("Pneumothorax" in row["not_assessed"].split(";") for row in rows)
    assert by_name["broken.png"]["not_analysed"].startswith("unreadable-image")
    assert by_name["RG3_J2KI.dcm"]["not_analysed"].startswith("not-a-chest")
    assert by_name["RG3_J2KI.dcm"]["abnormality"] == "" and by_name["RG3_J2KI.dcm"]["severity"] == ""


def test_an_empty_folder_is_an_error_not_an_empty_table(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(NoImagesError, match="no image files"):
        score_files([tmp_path], io.StringIO(), max_threads=None)


def test_jsonl_format(images: Path) -> None:
    out = io.StringIO()
    score_files([images / "a.png"], out, output_format="jsonl", max_threads=None)
    (row,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert row["file"].endswith("a.png") and isinstance(row["abnormality"], float)
    assert row["model_version"].startswith(json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text())["name"])
