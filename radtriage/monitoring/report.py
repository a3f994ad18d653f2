"""``radtriage monitor report``: a markdown report with PNG plots (trend lines, ROC, calibration).

Written into one folder: ``monitoring-report.md``, ``metrics.json`` (the snapshot it was written from) and
``plots/`` (``trend.png``: sensitivity and specificity for any abnormality per period of the window;
``roc_<finding>.png``; ``calibration_<finding>.png``). Plots are drawn with Pillow through the evaluation's own
chart helpers. The report holds aggregate figures only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..model.evaluation.metrics import calibration_bins, roc_curve
from ..model.evaluation.plots import COLOURS, Series, reliability_plot, roc_plot
from .live import snapshot
from .metrics import ANY_ABNORMALITY, LabelledCase, finding_performance, labelled_cases
from .wiring import Monitoring


def write_report(monitoring: Monitoring, out: str | os.PathLike[str], *, days: float | None = None,
                 until: datetime | None = None, periods: int = 6) -> Path:
    folder = Path(out)
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    snap = snapshot(monitoring, days=days, until=until, raise_alerts=False)
    since = datetime.fromisoformat(snap["window"]["since"])
    end = datetime.fromisoformat(snap["window"]["until"])
    cases = labelled_cases(monitoring.engine, since, end)
    plots = _plots(cases, folder / "plots", since, end, periods)
    (folder / "metrics.json").write_text(json.dumps(snap, indent=2, default=str), encoding="utf-8")
    path = folder / "monitoring-report.md"
    path.write_text(_markdown(snap, plots), encoding="utf-8")
    return path


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rate(rate: dict[str, Any]) -> str:
    low, high = rate["ci95"]
    if rate["value"] is None:
        return "-"
    return f"{rate['value']:.3f} ({_fmt(low, 2)}-{_fmt(high, 2)}; {rate['numerator']}/{rate['denominator']})"


def _markdown(snap: dict[str, Any], plots: Sequence[str]) -> str:
    model = snap["model"]
    lines = [
        "# radtriage monitoring report",
        "",
        f"Window: {snap['window']['since']} to {snap['window']['until']}. Model: {model.get('name', '-')} "
        f"{model.get('version', '-')}. Reference standard: radiologists' final reports (labels by radtriage's "
        "NegEx-style rules; uncertain mentions left out).",
        "",
        f"Scored studies with a current final report: {snap['performance']['cases']}.",
        "",
        "## Performance against final reports",
        "",
        "| finding | n | positives | uncertain | sensitivity (95% CI) | specificity | PPV | NPV | AUROC (95% CI) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, data in snap["performance"]["findings"].items():
        auc = data["auroc"]
        lines.append(
            f"| {label} | {data['n']} | {data['positives']} | {data['uncertain']} | {_rate(data['sensitivity'])} | "
            f"{_rate(data['specificity'])} | {_rate(data['ppv'])} | {_rate(data['npv'])} | "
            f"{_fmt(auc['value'])} ({_fmt(auc['ci95'][0], 2)}-{_fmt(auc['ci95'][1], 2)}) |"
        )
    if snap["performance"]["groups"]:
        lines += ["", "### Any abnormality by group", "", "| group | n | sensitivity | specificity |"]
        lines.append("|---|---|---|---|")
        for group, data in snap["performance"]["groups"].items():
            d = data[ANY_ABNORMALITY]
            lines.append(f"| {group} | {d['n']} | {_rate(d['sensitivity'])} | {_rate(d['specificity'])} |")
    drafts = snap["drafts"]
    lines += [
        "",
        "## Drafts for routine studies",
        "",
        f"Mode {drafts['mode']}, margin {drafts['margin']}, target NPV {drafts['target_npv']}. Drafted "
        f"{drafts['drafted']} of {drafts['labelled']} labelled studies (share {_fmt(drafts['share'])}); measured NPV "
        f"{_rate(drafts['npv'])}.",
        "",
        "## Operations",
        "",
    ]
    ops = snap["operations"]
    ttn = ops["time_to_notification_seconds"]
    lines += [
        f"- Time to notification (order received → priority sent): median {_fmt(ttn['p50'], 1)} s, 90th percentile "
        f"{_fmt(ttn['p90'], 1)} s, max {_fmt(ttn['max'], 1)} s over {ops['notifications']} studies"
        + (f" ({ops['negative_delays']} with clocks that disagree left out)" if ops["negative_delays"] else ""),
        f"- Queue length now: {ops['queue_length']}",
        "- Failures by reason: " + (", ".join(f"{k} {v}" for k, v in ops["failures_by_reason"].items()) or "none"),
        "- Final reports: " + ", ".join(f"{k} {v}" for k, v in sorted(snap["reports"].items())),
        "",
        "## Drift",
        "",
        "| kind | subject | value | limit | cases | alarming |",
        "|---|---|---|---|---|---|",
    ]
    for d in snap["drift"]:
        lines.append(f"| {d['kind']} | {d['subject']} | {_fmt(d['value'])} | {d['limit']} | {d['cases']} | "
                     f"{'YES' if d['alarming'] else 'no'} |")
    lines += ["", "## Plots", ""]
    lines += [f"![{Path(p).stem}](plots/{Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def _plots(cases: Sequence[LabelledCase], folder: Path, since: datetime, until: datetime, periods: int) -> list[str]:
    written: list[str] = []
    labels = list(dict.fromkeys(label for c in cases for label in c.findings)) + [ANY_ABNORMALITY]
    for label in labels:
        pairs = [(c.reference(label), c.score(label)[0]) for c in cases
                 if label == ANY_ABNORMALITY or label in c.findings]
        known = [(y, p) for y, p in pairs if y is not None]
        y = [a for a, _ in known]
        p = [b for _, b in known]
        fpr, tpr = roc_curve(y, p) if y else ([], [])
        if fpr:
            path = folder / f"roc_{label}.png"
            roc_plot(path, f"ROC against final reports: {label}", [Series(label, fpr, tpr)])
            written.append(str(path))
        if y:
            bins = [b for b in calibration_bins(y, p) if b.count]
            path = folder / f"calibration_{label}.png"
            reliability_plot(path, f"Calibration against final reports: {label}", [Series(
                label, [b.mean_predicted or 0.0 for b in bins], [b.fraction_positive or 0.0 for b in bins],
                markers=True)])
            written.append(str(path))
    step = (until - since) / max(periods, 1)
    sensitivity: list[tuple[float, float]] = []
    specificity: list[tuple[float, float]] = []
    for index in range(periods):
        start, end = since + step * index, since + step * (index + 1)
        members = [c for c in cases if start <= c.scored_at < end]
        data = finding_performance(members, ANY_ABNORMALITY, bootstrap=0)
        x = (index + 0.5) / periods
        if data["sensitivity"]["value"] is not None:
            sensitivity.append((x, data["sensitivity"]["value"]))
        if data["specificity"]["value"] is not None:
            specificity.append((x, data["specificity"]["value"]))
    path = folder / "trend.png"
    trend_plot(path, f"Any abnormality per {_period_name(step)} of the window", [
        Series("sensitivity", [x for x, _ in sensitivity], [v for _, v in sensitivity], markers=True),
        Series("specificity", [x for x, _ in specificity], [v for _, v in specificity], markers=True),
    ])
    written.append(str(path))
    return written


def _period_name(step: timedelta) -> str:
    days = step.total_seconds() / 86400
    return f"{days:.1f} days" if days >= 1 else f"{step.total_seconds() / 3600:.1f} hours"


def trend_plot(path: str | os.PathLike[str], title: str, series: Sequence[Series]) -> None:
    """Rates (0..1) over the window (x: 0 = start, 1 = end), one line per series."""
    width, height, left, top, right, bottom = 560, 360, 56, 36, 540, 320
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((width / 2, 10), title, fill="black", font=font, anchor="mt")
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - tick * (bottom - top)
        draw.line((left, y, right, y), fill="#e6e6e6")
        draw.text((left - 6, y), f"{tick:.2f}", fill="black", font=font, anchor="rm")
    draw.rectangle((left, top, right, bottom), outline="black")
    # ASCII only: PIL's default bitmap font has no arrows (a "→" was drawn as an empty box).
    draw.text(((left + right) / 2, height - 14), "window start to end", fill="black", font=font, anchor="mb")
    if not any(s.xs for s in series):
        draw.text(((left + right) / 2, (top + bottom) / 2), "no data yet", fill="#555555", font=font, anchor="mm")
    for index, s in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        points = [(left + x * (right - left), bottom - y * (bottom - top)) for x, y in zip(s.xs, s.ys, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        draw.line((right - 150, top + 10 + 14 * index, right - 130, top + 10 + 14 * index), fill=colour, width=3)
        draw.text((right - 125, top + 4 + 14 * index), s.name, fill="black", font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


__all__ = ["trend_plot", "write_report"]
