"""The `StudySource` contract, run against every adapter: a DICOM folder, and DICOMweb against a real Orthanc.

Both hold the same studies: three pydicom-data files (a CR chest PA in JPEG 2000, a CR of the lower leg, an MR)
and one two-view chest study made by wrapping a small image twice (PA and lateral, one series each).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.uid import JPEG2000, generate_uid

from radtriage.app.core.domain import InstanceInfo
from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.app.core.ports import StudySource
from radtriage.imaging.dicom_pixels import pixels_for_display, read_dataset
from radtriage.imaging.dicomweb_source import DicomwebStudySource
from radtriage.imaging.folder_source import FolderStudySource
from radtriage.imaging.selection import select_instance
from radtriage.imaging.wrap import wrap_image_as_dicom
from tests.support.data import pydicom_data_dir

PYDICOM_FILES = ("RG1_J2KI.dcm", "RG3_J2KI.dcm", "MR2_J2KI.dcm")


@dataclass(frozen=True)
class StoredStudies:
    files: dict[str, bytes]  # name -> Part 10 bytes, as loaded into every source
    two_view_study_uid: str


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> StoredStudies:
    files = {name: (pydicom_data_dir() / name).read_bytes() for name in PYDICOM_FILES}
    image_path = tmp_path_factory.mktemp("wrap") / "chest.png"
    Image.fromarray(np.add.outer(np.arange(40), np.arange(30)).astype(np.uint8) * 3).save(image_path)
    study_uid = generate_uid()
    for view in ("PA", "LL"):
        files[f"two-view-{view}.dcm"] = wrap_image_as_dicom(
            image_path, patient_id="TEST-0001", study_uid=study_uid, view_position=view
        )
    return StoredStudies(files, study_uid)


@pytest.fixture(scope="module", params=["folder", "dicomweb"])
def source(
    request: pytest.FixtureRequest, stored: StoredStudies, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StudySource]:
    if request.param == "folder":
        root = tmp_path_factory.mktemp("studies")
        for name, data in stored.files.items():
            (root / "nested" / name).parent.mkdir(exist_ok=True)
            (root / "nested" / name).write_bytes(data)
        yield FolderStudySource(root)
    else:
        orthanc = request.getfixturevalue("orthanc")
        for data in stored.files.values():
            assert orthanc.upload(data)["Status"] in ("Success", "AlreadyStored")
        yield DicomwebStudySource(
            orthanc.dicomweb_url, username=orthanc.username, password=orthanc.password, timeout=10, attempts=1
        )


def header(name: str) -> Dataset:
    return dcmread(pydicom_data_dir() / name, stop_before_pixels=True)


def test_find_instances_reports_the_selection_metadata(source: StudySource, stored: StoredStudies) -> None:
    expected = header("RG1_J2KI.dcm")
    [info] = source.find_instances(expected.StudyInstanceUID)
    assert info == InstanceInfo(
        study_instance_uid=expected.StudyInstanceUID,
        series_instance_uid=expected.SeriesInstanceUID,
        sop_instance_uid=expected.SOPInstanceUID,
        modality="CR",
        body_part_examined="CHEST",
        view_position="PA",
        series_description=None,
        image_laterality=None,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
    )


@pytest.mark.parametrize(
    ("name", "modality", "expected"),
    [("RG3_J2KI.dcm", "CR", ErrorCode.NOT_A_CHEST), ("MR2_J2KI.dcm", "MR", ErrorCode.NOT_A_RADIOGRAPH)],
)
def test_other_studies_are_listed_and_rejected_by_selection(
    source: StudySource, stored: StoredStudies, name: str, modality: str, expected: ErrorCode
) -> None:
    instances = source.find_instances(header(name).StudyInstanceUID)
    assert [i.modality for i in instances] == [modality]
    with pytest.raises(TriageError) as caught:
        select_instance(instances)
    assert caught.value.code is expected


def test_every_series_of_a_study_is_listed_with_its_own_view(source: StudySource, stored: StoredStudies) -> None:
    instances = source.find_instances(stored.two_view_study_uid)
    assert sorted(i.view_position or "" for i in instances) == ["LL", "PA"]
    assert len({i.series_instance_uid for i in instances}) == 2
    assert all(i.modality == "DX" and i.body_part_examined == "CHEST" for i in instances)
    assert select_instance(instances).view_position == "PA"


def test_retrieved_instance_decodes_to_the_stored_pixels(source: StudySource, stored: StoredStudies) -> None:
    [info] = source.find_instances(header("RG1_J2KI.dcm").StudyInstanceUID)
    retrieved = read_dataset(source.retrieve_instance(info))
    assert retrieved.SOPInstanceUID == info.sop_instance_uid
    # The stored transfer syntax comes back: JPEG 2000 arrives compressed and is decoded here.
    assert retrieved.file_meta.TransferSyntaxUID == JPEG2000
    original = read_dataset(stored.files["RG1_J2KI.dcm"])
    np.testing.assert_array_equal(pixels_for_display(retrieved), pixels_for_display(original))


def test_unknown_study_is_not_found(source: StudySource) -> None:
    with pytest.raises(TriageError) as caught:
        source.find_instances(generate_uid())
    assert caught.value.code is ErrorCode.STUDY_NOT_FOUND
    assert caught.value.retryable is False


def test_malformed_study_uid_is_not_found(source: StudySource) -> None:
    with pytest.raises(TriageError) as caught:
        source.find_instances("not a UID")
    assert caught.value.code is ErrorCode.STUDY_NOT_FOUND


def test_unknown_instance_of_a_known_study_is_not_found(source: StudySource, stored: StoredStudies) -> None:
    [info] = source.find_instances(header("RG1_J2KI.dcm").StudyInstanceUID)
    missing = InstanceInfo(info.study_instance_uid, info.series_instance_uid, generate_uid())
    with pytest.raises(TriageError) as caught:
        source.retrieve_instance(missing)
    assert caught.value.code is ErrorCode.STUDY_NOT_FOUND
    assert info.study_instance_uid not in caught.value.detail


def test_instances_are_listed_in_a_stable_order(source: StudySource, stored: StoredStudies) -> None:
    first = source.find_instances(stored.two_view_study_uid)
    assert first == source.find_instances(stored.two_view_study_uid)
    assert first == sorted(first, key=lambda i: (i.series_instance_uid, i.sop_instance_uid))
