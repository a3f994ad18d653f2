"""A `StudySource` over a folder of DICOM Part 10 files: the embedded default, and the demo's image archive.

Every regular file under the root (any depth, any name) whose bytes carry the Part 10 marker ("DICM" after the
128-byte preamble, PS3.10 7.1) is indexed by Study Instance UID from its header alone (pixels are not read).
Files may be added while the service runs: when a study is not in the index, the folder is scanned again, and
files seen before with the same size and modification time are not re-read.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

from radtriage.app.core.domain import InstanceInfo
from radtriage.app.core.errors import ErrorCode, TriageError

from .attributes import instance_info_from_dataset
from .files import is_part10_file

log = logging.getLogger(__name__)

#: Only these elements are read from each file's header.
_HEADER_KEYWORDS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "SeriesDescription",
    "ImageLaterality",
]


@dataclass(frozen=True)
class _IndexedFile:
    size: int
    mtime_ns: int
    instance: InstanceInfo | None  # None: not a DICOM file we can use (remembered so it is not re-read)


class FolderStudySource:
    """Studies from DICOM files under `root`. Safe to share between worker threads."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._files: dict[Path, _IndexedFile] = {}
        self._by_study: dict[str, list[tuple[Path, InstanceInfo]]] = {}

    # ------------------------------------------------------------------ StudySource

    def find_instances(self, study_instance_uid: str) -> list[InstanceInfo]:
        """Every instance of the study, ordered by series then instance UID. Raises STUDY_NOT_FOUND."""
        entries = self._study_entries(study_instance_uid)
        return [info for _path, info in entries]

    def retrieve_instance(self, instance: InstanceInfo) -> bytes:
        """The file's bytes as stored. Raises STUDY_NOT_FOUND when the instance (or its file) is gone."""
        for rescan in (False, True):
            with self._lock:
                if rescan:
                    self._rescan()
                path = self._path_of(instance)
            if path is None:
                continue
            try:
                return path.read_bytes()
            except FileNotFoundError:
                continue  # removed since it was indexed; the rescan will notice
        raise TriageError(ErrorCode.STUDY_NOT_FOUND, "the instance is not in the image folder")

    # ------------------------------------------------------------------ index

    def _study_entries(self, study_instance_uid: str) -> list[tuple[Path, InstanceInfo]]:
        with self._lock:
            entries = self._by_study.get(study_instance_uid)
            if not entries:
                self._rescan()
                entries = self._by_study.get(study_instance_uid)
        if not entries:
            raise TriageError(ErrorCode.STUDY_NOT_FOUND, "the study is not in the image folder")
        return entries

    def _path_of(self, instance: InstanceInfo) -> Path | None:
        for path, info in self._by_study.get(instance.study_instance_uid, []):
            if info.sop_instance_uid == instance.sop_instance_uid:
                return path
        return None

    def _rescan(self) -> None:
        """Bring the index up to date with the folder. Call with the lock held."""
        if not self.root.is_dir():
            log.warning("the image folder does not exist or is not a folder")
            self._files, self._by_study = {}, {}
            return
        files: dict[Path, _IndexedFile] = {}
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            try:
                stat = path.stat()
            except OSError:
                continue
            known = self._files.get(path)
            if known is not None and (known.size, known.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
                files[path] = known
            else:
                files[path] = _IndexedFile(stat.st_size, stat.st_mtime_ns, self._read_header(path))
        by_study: dict[str, list[tuple[Path, InstanceInfo]]] = {}
        seen: set[tuple[str, str]] = set()
        for path, indexed in files.items():
            info = indexed.instance
            if info is None or (info.study_instance_uid, info.sop_instance_uid) in seen:
                continue  # the same instance stored twice: the first path (sorted) wins
            seen.add((info.study_instance_uid, info.sop_instance_uid))
            by_study.setdefault(info.study_instance_uid, []).append((path, info))
        for entries in by_study.values():
            entries.sort(key=lambda entry: (entry[1].series_instance_uid, entry[1].sop_instance_uid))
        self._files, self._by_study = files, by_study

    @staticmethod
    def _read_header(path: Path) -> InstanceInfo | None:
        try:
            if not is_part10_file(path):
                return None
            ds = dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_KEYWORDS)
            return instance_info_from_dataset(ds)
        except Exception as exc:  # one bad file must not hide the others
            log.warning("skipping an unreadable DICOM file in the image folder (%s)", type(exc).__name__)
            return None
