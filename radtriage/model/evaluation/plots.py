"""ROC curves and reliability diagrams as PNG files, drawn with Pillow.

Pillow is already a dependency (it reads PNG/JPEG); a plotting library would be one more pinned package for two
kinds of chart. Both charts live in the unit square, so one small drawing helper serves both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from PIL import Image, ImageDraw, ImageFont

WIDTH: Final = 560
HEIGHT: Final = 520
MARGIN_LEFT: Final = 64
MARGIN_RIGHT: Final = 20
MARGIN_TOP: Final = 40
MARGIN_BOTTOM: Final = 56
#: Colour-blind-safe palette (Okabe & Ito, 2008).
COLOURS: Final = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")


@dataclass(frozen=True)
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    #: Draw a dot at each point (reliability bins) as well as the line.
    markers: bool = False


class _UnitSquareChart:
    """Axes from 0 to 1 on both sides, a title, axis labels, a legend."""

    def __init__(self, title: str, x_label: str, y_label: str) -> None:
        self.image = Image.new("RGB", (WIDTH, HEIGHT), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.font = ImageFont.load_default()
        self.legend: list[tuple[str, str]] = []
        left, top, right, bottom = self._box()
        self.draw.rectangle((left, top, right, bottom), outline="black")
        for tick in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
            x, y = self._point(tick, tick)
            self.draw.line((x, bottom, x, bottom + 4), fill="black")
            self.draw.line((left - 4, y, left, y), fill="black")
            self.draw.line((x, top, x, bottom), fill="#e6e6e6")
            self.draw.line((left, y, right, y), fill="#e6e6e6")
            self.draw.text((x, bottom + 6), f"{tick:.1f}", fill="black", font=self.font, anchor="mt")
            self.draw.text((left - 6, y), f"{tick:.1f}", fill="black", font=self.font, anchor="rm")
        self.draw.rectangle((left, top, right, bottom), outline="black")
        self.draw.text((WIDTH / 2, 12), title, fill="black", font=self.font, anchor="mt")
        self.draw.text(((left + right) / 2, HEIGHT - 16), x_label, fill="black", font=self.font, anchor="mb")
        # Pillow cannot draw rotated text directly; render the y label on its own image and rotate it.
        label = Image.new("RGB", (int(self.draw.textlength(y_label, font=self.font)) + 4, 14), "white")
        ImageDraw.Draw(label).text((2, 1), y_label, fill="black", font=self.font)
        rotated = label.rotate(90, expand=True)
        self.image.paste(rotated, (8, int((top + bottom) / 2 - rotated.height / 2)))

    @staticmethod
    def _box() -> tuple[int, int, int, int]:
        return MARGIN_LEFT, MARGIN_TOP, WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM

    def _point(self, x: float, y: float) -> tuple[float, float]:
        left, top, right, bottom = self._box()
        return left + x * (right - left), bottom - y * (bottom - top)

    def diagonal(self) -> None:
        start, end = self._point(0, 0), self._point(1, 1)
        steps = 40
        for i in range(0, steps, 2):  # dashed
            a, b = i / steps, (i + 1) / steps
            self.draw.line((start[0] + a * (end[0] - start[0]), start[1] + a * (end[1] - start[1]),
                            start[0] + b * (end[0] - start[0]), start[1] + b * (end[1] - start[1])), fill="#888888")

    def add(self, series: Series, colour: str) -> None:
        points = [self._point(x, y) for x, y in zip(series.xs, series.ys, strict=True)]
        if len(points) > 1:
            self.draw.line(points, fill=colour, width=2)
        if series.markers:
            for x, y in points:
                self.draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        self.legend.append((series.name, colour))

    def save(self, path: str | os.PathLike[str]) -> None:
        left, top, right, bottom = self._box()
        y = bottom - 14 * len(self.legend) - 6
        for name, colour in self.legend:
            self.draw.line((right - 190, y + 6, right - 170, y + 6), fill=colour, width=3)
            self.draw.text((right - 165, y), name[:30], fill="black", font=self.font)
            y += 14
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.image.save(path, format="PNG")


def roc_plot(path: str | os.PathLike[str], title: str, curves: Sequence[Series]) -> None:
    """ROC curves (false positive rate, true positive rate), one per series, with the chance diagonal."""
    chart = _UnitSquareChart(title, "false positive rate (1 - specificity)", "true positive rate (sensitivity)")
    chart.diagonal()
    for index, series in enumerate(curves):
        chart.add(series, COLOURS[index % len(COLOURS)])
    chart.save(path)


def reliability_plot(path: str | os.PathLike[str], title: str, bins: Sequence[Series]) -> None:
    """Reliability diagram: mean predicted probability against observed frequency per bin; diagonal = calibrated."""
    chart = _UnitSquareChart(title, "mean predicted probability", "fraction of cases with the finding")
    chart.diagonal()
    for index, series in enumerate(bins):
        chart.add(series, COLOURS[index % len(COLOURS)])
    chart.save(path)


__all__ = ["Series", "reliability_plot", "roc_plot"]
