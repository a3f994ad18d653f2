"""Live metrics: the model against radiologists' final reports, and the pipeline's operational figures.

For each finding the model scores, and for "any abnormality" (the study is called abnormal when any finding is
at or above its threshold, scored by the highest probability, as the evaluation defines it; the reference is the
report's overall call), over a window of scored studies with a current final report:

* counts (tp, fp, tn, fn), sensitivity, specificity, PPV and NPV with 95% Wilson intervals;
* AUROC with a bootstrap 95% interval (`radtriage.model.evaluation.metrics`, the same code as the evaluation);
* the same by view, age band, sex, manufacturer and door, where known.

Uncertain mentions ("possible effusion") are left out of that finding's figures and counted as ``uncertain``.
Operational figures: time to notification (order received → priority sent, i.e. the job completed), queue
length (jobs not finished), failures by reason, reports received by match and quality, drafts made.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select

from ..app.core.domain import JobState
from ..app.storage.database import as_utc as _utc
from ..app.storage.monitoring_tables import final_reports, image_observations, report_labels, result_annotations
from ..app.storage.tables import job_events, jobs, orders, results
from ..model.datasets import age_band
from ..model.drafting import wilson_interval
from ..model.evaluation.metrics import auroc, bootstrap_auroc_ci
from .labels import ABNORMAL

ANY_ABNORMALITY = "any_abnormality"



@dataclass(frozen=True)
class LabelledCase:
    """One scored study with its current final report's labels."""

    job_id: str
    scored_at: datetime
    model_sha256: str
    model_version: str
    #: label → (probability, threshold), in the model's label order
    findings: Mapping[str, tuple[float, float]]
    #: label → (value, certainty) from the report (plus "abnormal")
    labels: Mapping[str, tuple[float, str]]
    groups: Mapping[str, str] = field(default_factory=dict)

    def reference(self, label: str) -> float | None:
        """1.0 / 0.0 per the report, None when uncertain or not labelled."""
        key = ABNORMAL if label == ANY_ABNORMALITY else label
        found = self.labels.get(key)
        if found is None or found[1] == "uncertain":
            return None
        return found[0]

    def score(self, label: str) -> tuple[float, bool]:
        """(probability, called positive) of a finding, or of any abnormality (highest probability, any call)."""
        if label == ANY_ABNORMALITY:
            return max(p for p, _ in self.findings.values()), any(p >= t for p, t in self.findings.values())
        p, t = self.findings[label]
        return p, p >= t


def labelled_cases(engine: Engine, since: datetime | None = None, until: datetime | None = None,
                   model_sha256: str | None = None) -> list[LabelledCase]:
    """Scored studies in [since, until) (by scoring time) with labels from their current final report."""
    query = (
        select(results, orders.c.source.label("door"))
        .join(jobs, jobs.c.id == results.c.job_id)
        .join(orders, orders.c.id == jobs.c.order_id)
        .where(results.c.job_id.in_(
            select(report_labels.c.job_id)
            .join(final_reports, final_reports.c.id == report_labels.c.final_report_id)
            .where(final_reports.c.superseded.is_(False))
        ))
    )
    if since is not None:
        query = query.where(results.c.created_at >= since)
    if until is not None:
        query = query.where(results.c.created_at < until)
    if model_sha256:
        query = query.where(results.c.model_sha256 == model_sha256)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
        ids = [r["job_id"] for r in rows]
        labels: dict[str, dict[str, tuple[float, str]]] = {}
        observed: dict[str, Any] = {}
        if ids:
            for lab in conn.execute(
                select(report_labels.c.job_id, report_labels.c.label, report_labels.c.value, report_labels.c.certainty)
                .join(final_reports, final_reports.c.id == report_labels.c.final_report_id)
                .where(report_labels.c.job_id.in_(ids), final_reports.c.superseded.is_(False))
            ):
                labels.setdefault(lab.job_id, {})[lab.label] = (float(lab.value), lab.certainty)
            sops = [r["sop_instance_uid"] for r in rows]
            for obs in conn.execute(
                select(image_observations).where(image_observations.c.sop_instance_uid.in_(sops))
                .order_by(image_observations.c.id)
            ).mappings():
                observed[obs["sop_instance_uid"]] = obs
    cases = []
    for r in rows:
        seen = observed.get(r["sop_instance_uid"])
        groups = {"door": r["door"]}
        if seen is not None:
            groups["view"] = (seen["view_position"] or "unknown").upper()
            groups["age"] = age_band(seen["patient_age"])
            groups["sex"] = seen["patient_sex"] or "unknown"
            groups["manufacturer"] = seen["manufacturer"] or "unknown"
        cases.append(LabelledCase(
            job_id=r["job_id"], scored_at=_utc(r["created_at"]) or datetime.now(UTC),
            model_sha256=r["model_sha256"], model_version=r["model_version"],
            findings={f["label"]: (float(f["probability"]), float(f["threshold"])) for f in r["findings"]},
            labels=labels.get(r["job_id"], {}), groups=groups,
        ))
    return cases


def _rate(numerator: int, denominator: int) -> dict[str, Any]:
    low, high = wilson_interval(numerator, denominator)
    return {"value": numerator / denominator if denominator else None, "ci95": [low, high],
            "numerator": numerator, "denominator": denominator}


def finding_performance(cases: Sequence[LabelledCase], label: str, *, bootstrap: int = 200) -> dict[str, Any]:
    """Counts, rates with Wilson intervals and AUROC with a bootstrap interval for one finding."""
    y: list[float] = []
    p: list[float] = []
    tp = fp = tn = fn = 0
    uncertain = 0
    for case in cases:
        if label != ANY_ABNORMALITY and label not in case.findings:
            continue
        truth = case.reference(label)
        if truth is None:
            uncertain += int((case.labels.get(ABNORMAL if label == ANY_ABNORMALITY else label) or (0, ""))[1]
                             == "uncertain")
            continue
        probability, called = case.score(label)
        y.append(truth)
        p.append(probability)
        if called and truth == 1.0:
            tp += 1
        elif called:
            fp += 1
        elif truth == 1.0:
            fn += 1
        else:
            tn += 1
    area = auroc(y, p) if y else None
    low, high = bootstrap_auroc_ci(y, p, resamples=bootstrap) if area is not None and bootstrap else (None, None)
    return {
        "n": len(y), "positives": tp + fn, "uncertain": uncertain,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "sensitivity": _rate(tp, tp + fn), "specificity": _rate(tn, tn + fp),
        "ppv": _rate(tp, tp + fp), "npv": _rate(tn, tn + fn),
        "auroc": {"value": area, "ci95": [low, high]},
    }


def performance(cases: Sequence[LabelledCase], *, bootstrap: int = 200,
                group_by: Iterable[str] = ("view", "age", "sex", "manufacturer", "door")) -> dict[str, Any]:
    """Per finding and for any abnormality, overall and by group."""
    labels = _labels_in(cases)
    overall = {label: finding_performance(cases, label, bootstrap=bootstrap) for label in [*labels, ANY_ABNORMALITY]}
    by_group: dict[str, dict[str, Any]] = {}
    for key in group_by:
        values = sorted({c.groups[key] for c in cases if key in c.groups})
        for value in values:
            members = [c for c in cases if c.groups.get(key) == value]
            by_group[f"{key}={value}"] = {
                label: finding_performance(members, label, bootstrap=0) for label in [*labels, ANY_ABNORMALITY]
            }
    return {"cases": len(cases), "findings": overall, "groups": by_group}


def _labels_in(cases: Sequence[LabelledCase]) -> list[str]:
    seen: dict[str, None] = {}
    for case in cases:
        for label in case.findings:
            seen.setdefault(label, None)
    return list(seen)


# ------------------------------------------------------------------------------------------ operations


def operations(engine: Engine, since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """Time to notification, queue length, failures by reason, drafts, in [since, until) by order receipt."""
    with engine.connect() as conn:
        completed = select(job_events.c.job_id, func.min(job_events.c.at).label("done")).where(
            job_events.c.to_state == JobState.COMPLETED.value
        ).group_by(job_events.c.job_id).subquery()
        query = (
            select(orders.c.received_at, completed.c.done)
            .join(jobs, jobs.c.order_id == orders.c.id)
            .join(completed, completed.c.job_id == jobs.c.id)
        )
        failures_query = select(jobs.c.failure_code, func.count()).where(
            jobs.c.state == JobState.FAILED.value
        ).group_by(jobs.c.failure_code)
        drafts_query = select(result_annotations.c.draft_mode, func.count()).where(
            result_annotations.c.draft_text.is_not(None)
        ).group_by(result_annotations.c.draft_mode)
        scored_query = select(result_annotations.c.draft_mode, func.count()).group_by(result_annotations.c.draft_mode)
        if since is not None:
            query = query.where(orders.c.received_at >= since)
            failures_query = failures_query.where(jobs.c.updated_at >= since)
            drafts_query = drafts_query.where(result_annotations.c.created_at >= since)
            scored_query = scored_query.where(result_annotations.c.created_at >= since)
        if until is not None:
            query = query.where(orders.c.received_at < until)
            failures_query = failures_query.where(jobs.c.updated_at < until)
            drafts_query = drafts_query.where(result_annotations.c.created_at < until)
            scored_query = scored_query.where(result_annotations.c.created_at < until)
        delays = []
        negative_delays = 0
        for row in conn.execute(query):
            received, done = _utc(row.received_at), _utc(row.done)
            if received is None or done is None:
                continue
            seconds = (done - received).total_seconds()
            if seconds < 0:  # clocks that disagree (an order stamped by its sender): counted, never averaged in
                negative_delays += 1
                continue
            delays.append(seconds)
        unfinished = jobs.c.state.not_in([s.value for s in JobState if s.is_terminal])
        queue = conn.execute(select(func.count()).select_from(jobs).where(unfinished)).scalar_one()
        failures = {code or "unknown": int(n) for code, n in conn.execute(failures_query)}
        drafts = {mode: int(n) for mode, n in conn.execute(drafts_query)}
        annotated = {mode: int(n) for mode, n in conn.execute(scored_query)}
    return {
        "time_to_notification_seconds": _quantiles(delays),
        "notifications": len(delays),
        "negative_delays": negative_delays,
        "queue_length": int(queue),
        "failures_by_reason": failures,
        "drafts_by_mode": drafts,
        "scored_by_drafting_mode": annotated,
    }


def _quantiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "max": None, "mean": None}
    ordered = sorted(values)

    def q(fraction: float) -> float:
        index = max(0, math.ceil(fraction * len(ordered)) - 1)
        return ordered[index]

    return {"p50": q(0.5), "p90": q(0.9), "max": ordered[-1], "mean": sum(ordered) / len(ordered)}


def report_counts(engine: Engine, since: datetime | None = None) -> dict[str, int]:
    from .reports import ReportIntake

    return ReportIntake(engine).counts(since)


def draft_outcomes(engine: Engine, cases: Sequence[LabelledCase]) -> dict[str, Any]:
    """Measured NPV of drafts (shadow or sent) against the final reports: drafted studies reported normal."""
    ids = [c.job_id for c in cases]
    drafted: set[str] = set()
    if ids:
        with engine.connect() as conn:
            drafted = {r.job_id for r in conn.execute(
                select(result_annotations.c.job_id).where(
                    result_annotations.c.job_id.in_(ids), result_annotations.c.draft_text.is_not(None)
                )
            )}
    judged = [c for c in cases if c.reference(ANY_ABNORMALITY) is not None]
    drafted_cases = [c for c in judged if c.job_id in drafted]
    normal = sum(1 for c in drafted_cases if c.reference(ANY_ABNORMALITY) == 0.0)
    return {"labelled": len(judged), "drafted": len(drafted_cases),
            "share": len(drafted_cases) / len(judged) if judged else None,
            "npv": _rate(normal, len(drafted_cases))}


def status_counts(values: Iterable[str]) -> dict[str, int]:
    return dict(Counter(values))
