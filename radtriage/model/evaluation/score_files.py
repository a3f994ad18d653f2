"""Score image files outside the service: the CLI's ``radtriage score PATH... [--format csv|jsonl]``.

One output row per image file, in path order: ``file``, each finding's probability (in the model's label order),
``abnormality`` (the highest finding probability, as the evaluation defines it), ``priority`` (what the site's
triage policy assigns to a routine order: what the active model and policy decide; shadow mode changes what the
service sends, not this), ``model_version``, ``not_analysed`` (the error code and reason when the file could not be
scored: unreadable, not a radiograph, not a chest, lateral only, out of distribution, a child's film; empty
otherwise), ``severity`` (predicted geographic extent 0-8, empty when the model has no severity output) and
``not_assessed`` (the findings the policy names that the model cannot assess, ``;``-separated: their absence from
the row is not a negative).

An empty input (no image file found) is an error (`NoImagesError`), not an empty table. With ``progress``, a
progress bar goes to standard error.

DICOM files go through the scorer's own `prepare` (header checks included); PNG and JPEG files carry no header,
so only their pixels are checked. Images are scored in batches to use the CPU well.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from radtriage.app.core.domain import FindingScore, Priority
from radtriage.app.core.errors import TriageError
from radtriage.imaging.files import image_files

from .report import ABNORMALITY


class NoImagesError(ValueError):
    """The paths hold no image file to score."""


#: The model shipped in the package: trained by radtriage's own pipeline on ../shared/data (see its MODEL_CARD.md).
DEFAULT_MODEL_DIR: Final = Path(__file__).resolve().parents[1] / "default"
FORMATS: Final = ("csv", "jsonl")


def score_files(paths: Sequence[str | os.PathLike[str]], output: TextIO, *,
                model_dir: str | os.PathLike[str] | None = None, output_format: str = "csv",
                policy_path: str | os.PathLike[str] | None = None, batch_size: int = 16,
                max_threads: int | None = None, progress: bool = False) -> int:
    """Write one row per image to `output`; returns the number of rows. See the module docstring."""
    from tqdm import tqdm

    from ..policy import load_policy
    from ..scorer import XrvScorer

    if output_format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    files = list(image_files(paths))
    if not files:
        raise NoImagesError(f"no image files (DICOM, PNG, JPEG) found in {', '.join(str(p) for p in paths)}")
    scorer = XrvScorer.from_artefact(model_dir or DEFAULT_MODEL_DIR, max_threads=max_threads, batch_size=batch_size)
    policy = load_policy(policy_path)
    labels = list(scorer.labels)
    version = f"{scorer.identity.name} {scorer.identity.version}"
    not_assessed = ";".join(sorted(policy.labels_named() - set(labels)))
    columns = ["file", *labels, ABNORMALITY, "priority", "model_version", "not_analysed", "severity", "not_assessed"]
    writer = csv.DictWriter(output, fieldnames=columns) if output_format == "csv" else None
    if writer is not None:
        writer.writeheader()

    def emit(row: dict[str, Any]) -> None:
        if writer is not None:
            writer.writerow(row)
        else:
            output.write(json.dumps(row) + "\n")

    empty = None if writer is None else ""

    def row_for(path: Path, findings: list[FindingScore] | None, failure: str = "",
                severity: float | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {"file": str(path), "model_version": version, "not_analysed": failure,
                               "not_assessed": not_assessed}
        if findings is None:
            row.update({label: empty for label in labels})
            row.update({ABNORMALITY: empty, "priority": empty, "severity": empty})
            return row
        row.update({f.label: round(f.probability, 6) for f in findings})
        row[ABNORMALITY] = round(max(f.probability for f in findings), 6)
        row["priority"] = policy.decide(findings, Priority.ROUTINE)[0].code
        row["severity"] = empty if severity is None else round(severity, 3)
        return row

    count = 0
    pending: list[tuple[Path, Any]] = []

    def flush() -> None:
        nonlocal count
        if not pending:
            return
        for (path, image), findings in zip(pending, scorer.score_batch([image for _, image in pending]), strict=True):
            emit(row_for(path, findings, severity=scorer.severity(image)))
            count += 1
        pending.clear()

    for path in tqdm(files, desc="scoring", unit="img", disable=not progress, leave=False):
        try:
            pending.append((path, _prepare(scorer, path)))
        except TriageError as exc:
            flush()  # keep rows in path order
            emit(row_for(path, None, f"{exc.code.value}: {exc.detail}"))
            count += 1
            continue
        if len(pending) >= batch_size:
            flush()
    flush()
    return count


def _prepare(scorer: Any, path: Path) -> Any:
    from radtriage.app.core.errors import ErrorCode
    from radtriage.imaging.dicom_pixels import load_image_file

    try:
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            return scorer.prepare_array(load_image_file(path))
        return scorer.prepare(path.read_bytes())
    except OSError as exc:
        raise TriageError(ErrorCode.UNREADABLE_IMAGE, f"the file could not be read ({type(exc).__name__})") from None


__all__ = ["DEFAULT_MODEL_DIR", "FORMATS", "NoImagesError", "image_files", "score_files"]
