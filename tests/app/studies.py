"""Distinct studies for tests that queue several orders at once (the store allows one live order per study)."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from tests.support.data import pydicom_data_dir


def copies_of_rg1(folder: Path, count: int, prefix: str = "copy") -> list[str]:
    """`count` studies in `folder`: pydicom-data's RG1 chest radiograph under new UIDs; their Study Instance UIDs."""
    template = pydicom.dcmread(pydicom_data_dir() / "RG1_J2KI.dcm")
    uids = []
    for n in range(count):
        template.StudyInstanceUID = generate_uid()
        template.SeriesInstanceUID = generate_uid()
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.save_as(folder / f"{prefix}-{n}.dcm", enforce_file_format=True)
        uids.append(str(template.StudyInstanceUID))
    return uids
