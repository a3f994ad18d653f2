"""One snapshot of everything monitoring knows over a window, and its Prometheus text form.

`snapshot` gathers the performance against final reports (`metrics`), the operational figures, the report
counts, the drafts' measured NPV and share, and drift (`drift`), raising alerts that cross their limits.
`prometheus_text` renders it in the Prometheus text exposition format 0.0.4 (gauges; labels escaped as the
format requires).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from .drift import DriftFinding, input_drift, output_drift, reference_from_evaluation
from .metrics import ANY_ABNORMALITY, draft_outcomes, labelled_cases, operations, performance, report_counts
from .wiring import Monitoring


def snapshot(monitoring: Monitoring, *, days: float | None = None, until: datetime | None = None,
             raise_alerts: bool = True, bootstrap: int = 200) -> dict[str, Any]:
    settings = monitoring.settings
    until = until or datetime.now(UTC)
    since = until - timedelta(days=days if days is not None else settings.metrics_window_days)
    engine = monitoring.engine
    cases = labelled_cases(engine, since, until)
    measured = performance(cases, bootstrap=bootstrap)
    drift: list[DriftFinding] = []
    model_info: dict[str, Any] = {}
    try:
        manifest = monitoring.manifest()
    except Exception:  # no readable model: performance and operations are still worth serving
        manifest = None
    if manifest is not None:
        reference = reference_from_evaluation(monitoring.evaluation())
        model_info = {"name": manifest.name, "version": manifest.version, "sha256": manifest.weights_sha256}
        drift += output_drift(engine, reference["scores"], manifest.weights_sha256, since=since, until=until,
                              limit=settings.drift_psi_alert)
        drift += input_drift(engine, reference, since=since, until=until, limit=settings.drift_psi_alert)
    any_abnormality = measured["findings"].get(ANY_ABNORMALITY, {})
    if settings.performance_floor_sensitivity > 0 and any_abnormality:
        sensitivity = any_abnormality["sensitivity"]
        drift.append(DriftFinding("performance-floor", "any-abnormality-sensitivity", sensitivity["value"],
                                  settings.performance_floor_sensitivity, sensitivity["denominator"]))
    raised = []
    if raise_alerts:
        for finding in drift:
            if finding.alarming and finding.cases >= settings.drift_min_cases:
                if monitoring.alerts.raise_alert(finding, now=until):
                    raised.append(finding.subject)
    return {
        "window": {"since": since.isoformat(), "until": until.isoformat()},
        "model": model_info,
        "performance": measured,
        "drafts": {"mode": settings.drafting_mode, "margin": settings.drafting_margin,
                   "target_npv": settings.drafting_target_npv, **draft_outcomes(engine, cases)},
        "operations": operations(engine, since, until),
        "reports": report_counts(engine, since),
        "drift": [
            {"kind": d.kind, "subject": d.subject, "value": d.value, "limit": d.limit, "cases": d.cases,
             "alarming": d.alarming and d.cases >= settings.drift_min_cases}
            for d in drift
        ],
        "alerts": {"raised_now": raised, "in_window": monitoring.alerts.counts(since)},
    }


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _line(name: str, value: float | int | None, **labels: str) -> str | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    rendered = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return f"radtriage_{name}{{{rendered}}} {value}" if rendered else f"radtriage_{name} {value}"


def _metrics(snap: dict[str, Any]) -> Iterator[tuple[str, str, float | int | None, dict[str, str]]]:
    """(name, help, value, labels) for every number in the snapshot worth a time series."""
    for label, data in snap["performance"]["findings"].items():
        for rate in ("sensitivity", "specificity", "ppv", "npv"):
            yield (f"finding_{rate}", f"{rate} against final reports over the window", data[rate]["value"],
                   {"finding": label})
        yield "finding_auroc", "AUROC against final reports over the window", data["auroc"]["value"], {"finding": label}
        for count in ("tp", "fp", "tn", "fn", "uncertain"):
            yield "finding_cases", "labelled cases by outcome", data[count], {"finding": label, "outcome": count}
    yield "labelled_cases", "scored studies with a current final report in the window", snap["performance"]["cases"], {}
    ops = snap["operations"]
    for q, v in ops["time_to_notification_seconds"].items():
        yield "time_to_notification_seconds", "order received to priority sent", v, {"quantile": q}
    yield "queue_length", "jobs not finished", ops["queue_length"], {}
    for reason, n in ops["failures_by_reason"].items():
        yield "failures", "failed jobs in the window by reason", n, {"reason": reason}
    for key, n in snap["reports"].items():
        yield "final_reports", "final reports received in the window", n, {"kind": key}
    drafts = snap["drafts"]
    yield "drafts_npv", "NPV of drafts against final reports", drafts["npv"]["value"], {"mode": drafts["mode"]}
    yield "drafts_share", "share of labelled studies drafted", drafts["share"], {"mode": drafts["mode"]}
    for d in snap["drift"]:
        subject = {"kind": d["kind"], "subject": d["subject"]}
        yield "drift", "PSI (drift) or value (performance floor)", d["value"], subject
        yield "drift_alarming", "1 when the drift value crosses its limit", int(d["alarming"]), subject
    for kind, n in snap["alerts"]["in_window"].items():
        yield "alerts", "alerts raised in the window", n, {"kind": kind}


def prometheus_text(snap: dict[str, Any]) -> str:
    lines: list[str] = []
    declared: set[str] = set()
    for name, help_text, value, labels in _metrics(snap):
        if name not in declared:
            lines += [f"# HELP radtriage_{name} {help_text}", f"# TYPE radtriage_{name} gauge"]
            declared.add(name)
        line = _line(name, value, **labels)
        if line:
            lines.append(line)
    return "\n".join(lines) + "\n"
