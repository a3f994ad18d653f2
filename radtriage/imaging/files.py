"""Finding images on disk: DICOM Part 10 files (by their marker, whatever their name) and PNG/JPEG files."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

IMAGE_SUFFIXES: Final = frozenset({".dcm", ".dicom", ".png", ".jpg", ".jpeg"})


def is_part10_file(path: Path) -> bool:
    """True when the file carries the DICOM Part 10 marker: "DICM" after the 128-byte preamble (PS3.10 7.1)."""
    try:
        with path.open("rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def image_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files named directly, and image files (by suffix, or a DICOM preamble) found recursively in folders."""
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for found in sorted(p for p in path.rglob("*") if p.is_file()):
                if found.suffix.lower() in IMAGE_SUFFIXES or (not found.suffix and is_part10_file(found)):
                    yield found
        else:
            yield path  # a missing or unreadable file becomes a not-analysed row, not a crash
