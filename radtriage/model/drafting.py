"""Draft reports for routine studies: findings + thresholds + margins → a preliminary draft, or None.

Pure functions, no I/O. A draft is offered only when *every* finding the model checks is below its operating
point by at least the site's margin (``probability < threshold - margin``): the margin keeps cases that are
close to a threshold out of the draft pile. The site chooses the margin on an evaluation set for a target
negative predictive value (`margin_for_npv`): among the studies it would draft, the share that the radiologist
also reports as normal.

The service drafts only studies whose triage priority is routine (an order that arrived urgent is not turned
into a routine draft). A draft is never a final report: it is the preliminary conclusion of a DiagnosticReport
whose status stays ``preliminary`` until a radiologist signs the report in the RIS. The untrained placeholder
model never drafts.

Modes (setting ``drafting_mode``): ``off`` (default, no drafts), ``shadow`` (drafts are computed and stored for
measurement, never sent), ``on`` (drafts are stored and sent in the DiagnosticReport).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from radtriage.app.core.domain import FindingScore, ModelIdentity

DRAFTING_MODES: Final = ("off", "shadow", "on")
#: Key of a per-finding margin mapping that applies to every finding not named.
ANY_FINDING: Final = "*"

DRAFT_HEADLINE: Final = "No acute cardiopulmonary abnormality detected by AI"


def parse_margins(text: str | float | Mapping[str, float]) -> dict[str, float]:
    """A margin setting → ``{finding: margin}``; ``"*"`` is the margin of findings not named.

    Accepts a number (``0.05``: one margin for every finding), a mapping, or text: ``"0.05"`` or
    ``"Effusion=0.02, Pneumonia=0.1, *=0.05"``. Margins must lie in [0, 1].
    """
    if isinstance(text, Mapping):
        margins = {str(k): float(v) for k, v in text.items()}
    elif isinstance(text, int | float):
        margins = {ANY_FINDING: float(text)}
    else:
        margins = {}
        stripped = text.strip()
        if not stripped:
            stripped = "0"
        for part in stripped.split(","):
            name, eq, value = part.partition("=")
            try:
                if eq:
                    margins[name.strip()] = float(value)
                else:
                    margins[ANY_FINDING] = float(name)
            except ValueError:
                raise ValueError(f"drafting margin {part.strip()!r} is not a number (or finding=number)") from None
    for finding, margin in margins.items():
        if not (math.isfinite(margin) and 0.0 <= margin <= 1.0):
            raise ValueError(f"drafting margin for {finding!r} must be in [0, 1], got {margin!r}")
    margins.setdefault(ANY_FINDING, 0.0)
    return margins


def margin_for(label: str, margins: Mapping[str, float]) -> float:
    return float(margins.get(label, margins.get(ANY_FINDING, 0.0)))


@dataclass(frozen=True)
class DraftReport:
    """A preliminary, unsigned draft conclusion for a study the model found routine."""

    text: str
    model_name: str
    model_version: str
    #: (finding, probability, threshold, margin) of every finding checked, in the model's label order.
    findings_checked: tuple[tuple[str, float, float, float], ...] = field(default=())

    @property
    def labels_checked(self) -> tuple[str, ...]:
        return tuple(item[0] for item in self.findings_checked)


def is_draftable(findings: Sequence[FindingScore], margins: Mapping[str, float]) -> bool:
    """True when there is at least one finding and every one is below its threshold minus its margin."""
    return bool(findings) and all(f.probability < f.threshold - margin_for(f.label, margins) for f in findings)


def draft_report(
    findings: Sequence[FindingScore], model: ModelIdentity, margins: Mapping[str, float]
) -> DraftReport | None:
    """The draft for one scored study, or None when any finding is too close to (or above) its threshold.

    The placeholder model never drafts: its numbers mean nothing.
    """
    if model.placeholder or not is_draftable(findings, margins):
        return None
    checked = tuple((f.label, float(f.probability), float(f.threshold), margin_for(f.label, margins)) for f in findings)
    names = ", ".join(f.label for f in findings)
    text = "\n".join(
        [
            f"PRELIMINARY DRAFT - NOT SIGNED. {DRAFT_HEADLINE} "
            "(every finding the model checks is below its operating point by the site's margin).",
            f"Findings checked: {names}.",
            f"Model: {model.name} {model.version}. Findings outside this list are not assessed by the model.",
            "This draft must be reviewed and signed by a radiologist; it is not a final report.",
        ]
    )
    return DraftReport(text=text, model_name=model.name, model_version=model.version, findings_checked=checked)


# ------------------------------------------------------------------------------ choosing the operating point


@dataclass(frozen=True)
class DraftPerformance:
    """What drafting at one margin does on a labelled set: NPV among drafted studies and the share drafted."""

    margin: float
    cases: int
    drafted: int
    #: Drafted studies that the reference standard calls abnormal (the misses that matter).
    drafted_abnormal: int

    @property
    def share(self) -> float | None:
        return self.drafted / self.cases if self.cases else None

    @property
    def npv(self) -> float | None:
        return (self.drafted - self.drafted_abnormal) / self.drafted if self.drafted else None

    def npv_ci95(self) -> tuple[float | None, float | None]:
        return wilson_interval(self.drafted - self.drafted_abnormal, self.drafted)


def draft_performance(
    abnormal: Sequence[float],
    probabilities: Sequence[Sequence[float]],
    thresholds: Sequence[float],
    margins: Mapping[str, float] | float,
    labels: Sequence[str] | None = None,
) -> DraftPerformance:
    """Drafting at `margins` on labelled cases: `abnormal[i]` is 1/0, `probabilities[i]` one value per label."""
    names = list(labels) if labels is not None else [str(i) for i in range(len(thresholds))]
    margin_map = {ANY_FINDING: float(margins)} if isinstance(margins, int | float) else dict(margins)
    drafted = drafted_abnormal = 0
    for truth, row in zip(abnormal, probabilities, strict=True):
        findings = [FindingScore(n, float(p), float(t)) for n, p, t in zip(names, row, thresholds, strict=True)]
        if is_draftable(findings, margin_map):
            drafted += 1
            drafted_abnormal += int(truth == 1.0)
    single = float(margins) if isinstance(margins, int | float) else margin_for(ANY_FINDING, margin_map)
    return DraftPerformance(single, len(abnormal), drafted, drafted_abnormal)


def margin_for_npv(
    abnormal: Sequence[float],
    probabilities: Sequence[Sequence[float]],
    thresholds: Sequence[float],
    target_npv: float,
    *,
    candidates: Sequence[float] | None = None,
) -> DraftPerformance | None:
    """The smallest global margin whose NPV on these cases is at least `target_npv` (it drafts the most).

    A larger margin drafts fewer studies, each further from every threshold. None when no candidate reaches the
    target with at least one drafted study.
    """
    if not 0.0 < target_npv <= 1.0:
        raise ValueError(f"target NPV must be in (0, 1], got {target_npv}")
    grid = candidates if candidates is not None else [round(0.005 * i, 3) for i in range(0, 101)]
    for margin in sorted(grid):
        performance = draft_performance(abnormal, probabilities, thresholds, margin)
        if performance.npv is not None and performance.npv >= target_npv:
            return performance
    return None


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion (Wilson 1927), 95% by default; (None, None) when `total` is 0."""
    if total <= 0:
        return None, None
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


__all__ = [
    "ANY_FINDING",
    "DRAFTING_MODES",
    "DRAFT_HEADLINE",
    "DraftPerformance",
    "DraftReport",
    "draft_performance",
    "draft_report",
    "is_draftable",
    "margin_for",
    "margin_for_npv",
    "parse_margins",
    "wilson_interval",
]
