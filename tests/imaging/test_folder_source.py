"""Folder specifics beyond the StudySource contract: what is indexed, and files that come and go while running."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom import dcmread

from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.imaging.folder_source import FolderStudySource
from tests.support.data import pydicom_data_dir

RG1 = pydicom_data_dir() / "RG1_J2KI.dcm"
RG3 = pydicom_data_dir() / "RG3_J2KI.dcm"


def study_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def not_found(call, *args) -> TriageError:  # type: ignore[no-untyped-def]
    with pytest.raises(TriageError) as caught:
        call(*args)
    assert caught.value.code is ErrorCode.STUDY_NOT_FOUND
    return caught.value


def test_a_study_added_while_running_is_found(tmp_path: Path) -> None:
    source = FolderStudySource(tmp_path)
    not_found(source.find_instances, study_uid(RG1))
    shutil.copy(RG1, tmp_path / "arrived-later")  # DICOM files often have no extension
    [info] = source.find_instances(study_uid(RG1))
    assert source.retrieve_instance(info) == RG1.read_bytes()


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")  # from reading broken.dcm
def test_files_that_are_not_dicom_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("studies for the demo")
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 50)  # marker, then garbage
    (tmp_path / "sub").mkdir()
    shutil.copy(RG3, tmp_path / "sub" / "leg.dcm")
    [info] = FolderStudySource(tmp_path).find_instances(study_uid(RG3))
    assert info.body_part_examined == "EXTREMITY"


def test_the_same_instance_stored_twice_is_listed_once(tmp_path: Path) -> None:
    shutil.copy(RG1, tmp_path / "a.dcm")
    shutil.copy(RG1, tmp_path / "b.dcm")
    assert len(FolderStudySource(tmp_path).find_instances(study_uid(RG1))) == 1


def test_a_removed_file_is_not_found(tmp_path: Path) -> None:
    shutil.copy(RG1, tmp_path / "a.dcm")
    source = FolderStudySource(tmp_path)
    [info] = source.find_instances(study_uid(RG1))
    (tmp_path / "a.dcm").unlink()
    error = not_found(source.retrieve_instance, info)
    assert info.study_instance_uid not in str(error)


def test_unchanged_files_are_not_read_again_on_a_rescan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(RG1, tmp_path / "a.dcm")
    source = FolderStudySource(tmp_path)
    source.find_instances(study_uid(RG1))
    reads: list[Path] = []
    original = FolderStudySource._read_header

    def counting_read_header(path: Path) -> object:
        reads.append(path)
        return original(path)

    monkeypatch.setattr(FolderStudySource, "_read_header", staticmethod(counting_read_header))
    shutil.copy(RG3, tmp_path / "b.dcm")
    source.find_instances(study_uid(RG3))
    assert reads == [tmp_path / "b.dcm"]


def test_a_missing_folder_finds_nothing(tmp_path: Path) -> None:
    not_found(FolderStudySource(tmp_path / "absent").find_instances, study_uid(RG1))
