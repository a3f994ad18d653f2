"""Pictures for the browser: a study's image as PNG, and Grad-CAM heatmaps as transparent overlays.

The image comes from the study source (the PACS over DICOMweb, or the folder), is decoded with the same code the
model uses (`radtriage.imaging.dicom_pixels.pixels_for_display`: Modality and VOI LUT applied, MONOCHROME2), and
is written as an 8-bit grayscale PNG: downscaled so that its long side is at most `DISPLAY_LONG_SIDE` for the
first view, and at full resolution on demand, unless it has more pixels than a browser canvas handles well
(`max_pixels`), in which case "full" is downscaled to that and says so.

Heatmaps: the scorer's Grad-CAM map covers the centre square the model saw (preprocessing ``xrv-v1`` crops the
long side evenly), so the overlay is drawn into that square of a transparent image the size of the display image;
the browser then lays it exactly on top. The model is loaded only when the first heatmap is asked for.

Everything is cached as files under ``<home>/cache/web`` (names are hashes: no UIDs on disk), because decoding a
JPEG 2000 radiograph or running Grad-CAM takes long enough to be worth doing once.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..app.core.domain import ImagingOrder, InstanceInfo, TriageResult
from ..app.core.errors import ErrorCode, TriageError
from ..app.core.ports import ImageScorer, InstanceSelector, StudySource

#: Long side, in pixels, of the image shown first (fast to send; the viewer can ask for full resolution).
DISPLAY_LONG_SIDE = 1024
#: Heatmap values below this are left transparent: only where the model looked hardest is coloured.
HEATMAP_FLOOR = 0.2
#: Long side, in pixels, of a worklist thumbnail.
THUMBNAIL_LONG_SIDE = 96


class PictureUnavailable(Exception):
    """An image or heatmap cannot be shown; `message` says why, in words fit for the page (no patient data)."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Picture:
    png: bytes
    width: int
    height: int
    original_width: int
    original_height: int

    @property
    def downscaled(self) -> bool:
        return (self.width, self.height) != (self.original_width, self.original_height)

    def meta(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "original_width": self.original_width,
            "original_height": self.original_height,
            "downscaled": self.downscaled,
        }


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:40]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _scaled_size(width: int, height: int, *, long_side: int | None, max_pixels: int) -> tuple[int, int]:
    scale = 1.0
    if long_side is not None and max(width, height) > long_side:
        scale = long_side / max(width, height)
    if width * height * scale * scale > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
    return max(1, round(width * scale)), max(1, round(height * scale))


#: One colour per heatmap, so that two shown together can be told apart on a grey radiograph: saturated hues far
#: apart on the colour wheel (names for the legend). Each map goes from transparent (low attention) to its colour.
HEATMAP_PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("orange-red", (255, 82, 36)),
    ("cyan", (0, 214, 255)),
    ("magenta", (255, 64, 214)),
    ("green", (96, 240, 64)),
    ("yellow", (255, 221, 0)),
    ("violet", (150, 112, 255)),
)


def heatmap_palette(labels: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Colour name and CSS hex of each heatmap, by position (flagged findings, highest score first)."""
    out = {}
    for index, label in enumerate(labels):
        name, (r, g, b) = HEATMAP_PALETTE[index % len(HEATMAP_PALETTE)]
        out[label] = (name, f"#{r:02x}{g:02x}{b:02x}")
    return out


def heatmap_colours(values: np.ndarray, colour: tuple[int, int, int] = HEATMAP_PALETTE[0][1]) -> np.ndarray:
    """An RGBA uint8 image from a map in [0, 1]: transparent below `HEATMAP_FLOOR`, then `colour` with opacity
    rising to 0.85 at the map's maximum, and brightening towards white at the very top (the legend's scale)."""
    v = np.clip(values.astype(np.float32), 0.0, 1.0)
    t = np.clip((v - HEATMAP_FLOOR) / (1.0 - HEATMAP_FLOOR), 0.0, 1.0)
    base = np.asarray(colour, dtype=np.float32) / 255.0
    white = np.clip((t - 0.8) / 0.2, 0.0, 1.0)[..., None] * 0.35
    rgb = base[None, None, :] * (1.0 - white) + white
    alpha = 0.85 * np.sqrt(t)  # fades in from the floor: no hard edge where the map crosses it
    rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)
    result: np.ndarray = (rgba * 255.0 + 0.5).astype(np.uint8)
    return result


class StudyPictures:
    """Renders and caches a study's images and heatmaps (see the module docstring)."""

    def __init__(
        self,
        source: StudySource,
        selector: InstanceSelector,
        scorer: Callable[[], ImageScorer],
        cache_dir: Path,
        *,
        max_pixels: int = 40_000_000,
    ) -> None:
        self.source = source
        self.selector = selector
        self._scorer = scorer
        self.cache_dir = cache_dir
        self.max_pixels = max_pixels
        self._lock = threading.Lock()  # one decode / Grad-CAM at a time: they are memory-hungry

    # ------------------------------------------------------------------ images

    def image(self, order: ImagingOrder, result: TriageResult | None, *, full: bool) -> Picture:
        """The study's image (the instance that was scored, else the one the selector picks, else the first)."""
        variant = "full" if full else "display"
        instance = self._instance(order, result)
        key = _key("image", instance.sop_instance_uid, variant, str(self.max_pixels))
        cached = self._cached(key)
        if cached is not None:
            return cached
        with self._lock:
            pixels = self._pixels(instance)
            height, width = pixels.shape
            size = _scaled_size(
                width, height, long_side=None if full else DISPLAY_LONG_SIDE, max_pixels=self.max_pixels
            )
            image = Image.fromarray((pixels * 255.0 + 0.5).astype(np.uint8), mode="L")
            if size != (width, height):
                image = image.resize(size, Image.Resampling.LANCZOS)
            picture = Picture(_png(image), size[0], size[1], width, height)
            self._store(key, picture)
        return picture

    def _instance(self, order: ImagingOrder, result: TriageResult | None) -> InstanceInfo:
        try:
            instances = self.source.find_instances(order.study_instance_uid)
        except TriageError as error:
            if error.code is ErrorCode.PACS_UNAVAILABLE:
                raise PictureUnavailable("The image archive did not answer. Try again in a moment.", 503) from None
            raise PictureUnavailable("The image archive does not have this study.") from None
        if not instances:
            raise PictureUnavailable("The image archive has no images for this study.")
        if result is not None:
            for instance in instances:
                if instance.sop_instance_uid == result.sop_instance_uid:
                    return instance
        try:
            return self.selector(instances)
        except TriageError:
            return instances[0]  # not analysable, but a person may still want to look at it

    def _pixels(self, instance: InstanceInfo) -> np.ndarray:
        from ..imaging.dicom_pixels import pixels_for_display, read_dataset  # pydicom: only when an image is drawn

        try:
            data = self.source.retrieve_instance(instance)
            dataset = read_dataset(data)
            self._store_header(instance.study_instance_uid, study_header(dataset))
            pixels = pixels_for_display(dataset)
        except TriageError as error:
            if error.code is ErrorCode.PACS_UNAVAILABLE:
                raise PictureUnavailable("The image archive did not answer. Try again in a moment.", 503) from None
            raise PictureUnavailable("This image cannot be displayed: its pixel data could not be read.") from None
        except MemoryError:
            raise PictureUnavailable("This image is too large to be decoded on this server.", 413) from None
        return pixels

    def thumbnail(self, order: ImagingOrder, result: TriageResult | None) -> bytes:
        """A small PNG of the study's image for the worklist (from the cached display image)."""
        key = _key("thumbnail", order.study_instance_uid, result.sop_instance_uid if result else "")
        path = self.cache_dir / f"{key}.thumb.png"
        if path.exists():
            return path.read_bytes()
        display = Image.open(io.BytesIO(self.image(order, result, full=False).png))
        display.thumbnail((THUMBNAIL_LONG_SIDE, THUMBNAIL_LONG_SIDE), Image.Resampling.LANCZOS)
        png = _png(display)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.cache_dir / f".{key}.thumb.tmp"
        temporary.write_bytes(png)
        temporary.replace(path)
        return png

    def header(self, study_instance_uid: str) -> dict[str, str] | None:
        """Age, sex and description of a study whose image has been drawn (cached then); None before that."""
        try:
            cached = json.loads((self.cache_dir / f"{_key('header', study_instance_uid)}.header.json").read_text())
        except (OSError, ValueError):
            return None
        return cached if isinstance(cached, dict) else None

    def _store_header(self, study_instance_uid: str, header: dict[str, str]) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        key = _key("header", study_instance_uid)
        temporary = self.cache_dir / f".{key}.header.tmp"
        temporary.write_text(json.dumps(header), encoding="utf-8")
        temporary.replace(self.cache_dir / f"{key}.header.json")

    # ------------------------------------------------------------------ heatmaps

    def heatmap(self, order: ImagingOrder, result: TriageResult, label: str) -> Picture:
        """The Grad-CAM overlay for `label`, the size of the display image. Only the model that scored the study
        can explain it: with another model loaded, the heatmap is refused rather than made up."""
        if label not in {f.label for f in result.findings}:
            raise PictureUnavailable("This model has no such finding.")
        display = self.image(order, result, full=False)
        flagged = [f.label for f in sorted(result.positive_findings, key=lambda f: -f.probability)]
        _name, hex_colour = heatmap_palette(flagged if label in flagged else [label])[label]
        colour = (int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16))
        key = _key("heatmap", result.sop_instance_uid, result.model.sha256, label, str(display.width), hex_colour)
        cached = self._cached(key)
        if cached is not None:
            return cached
        try:
            scorer = self._scorer()
        except TriageError:
            raise PictureUnavailable("The model could not be loaded, so no heatmap can be drawn.", 503) from None
        explain = getattr(scorer, "heatmap", None)
        if explain is None:
            raise PictureUnavailable("The loaded model cannot explain its scores (no heatmap support).")
        if scorer.identity.sha256 != result.model.sha256:
            raise PictureUnavailable(
                f"This study was scored by model {result.model.version}, which is no longer the loaded model; "
                "its heatmaps cannot be recomputed.",
                409,
            )
        with self._lock:
            instance = self._instance(order, result)
            try:
                prepared = scorer.prepare(self.source.retrieve_instance(instance))
                cam = np.asarray(explain(prepared, label), dtype=np.float32)
            except TriageError:
                raise PictureUnavailable("The image could not be prepared for the model.") from None
            side = min(display.width, display.height)
            resized = Image.fromarray((np.clip(cam, 0, 1) * 255).astype(np.uint8), mode="L").resize(
                (side, side), Image.Resampling.BILINEAR
            )
            square = heatmap_colours(np.asarray(resized, dtype=np.float32) / 255.0, colour)
            canvas = np.zeros((display.height, display.width, 4), dtype=np.uint8)
            top, left = (display.height - side) // 2, (display.width - side) // 2
            canvas[top : top + side, left : left + side] = square
            picture = Picture(
                _png(Image.fromarray(canvas, mode="RGBA")),
                display.width,
                display.height,
                display.width,
                display.height,
            )
            self._store(key, picture)
        return picture

    # ------------------------------------------------------------------ cache

    def _cached(self, key: str) -> Picture | None:
        png, meta = self.cache_dir / f"{key}.png", self.cache_dir / f"{key}.json"
        if not (png.exists() and meta.exists()):
            return None
        try:
            m = json.loads(meta.read_text(encoding="utf-8"))
            return Picture(png.read_bytes(), m["width"], m["height"], m["original_width"], m["original_height"])
        except (OSError, ValueError, KeyError):
            return None

    def _store(self, key: str, picture: Picture) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.cache_dir / f".{key}.png.tmp"
        temporary.write_bytes(picture.png)
        temporary.replace(self.cache_dir / f"{key}.png")
        (self.cache_dir / f"{key}.json").write_text(json.dumps(picture.meta()), encoding="utf-8")


def _age(dataset: Any) -> str:
    """PatientAge as people write it ("45 y", "8 mo"), from the AS value (PS3.5 6.2) or birth and study dates."""
    raw = str(dataset.get("PatientAge", "") or "").strip().upper()
    if len(raw) == 4 and raw[:3].isdigit() and raw[3] in "DWMY":
        return f"{int(raw[:3])} {dict(D='d', W='wk', M='mo', Y='y')[raw[3]]}"
    born, studied = str(dataset.get("PatientBirthDate", "") or ""), str(dataset.get("StudyDate", "") or "")
    if len(born) == 8 and len(studied) == 8 and born.isdigit() and studied.isdigit():
        years = int(studied[:4]) - int(born[:4]) - ((studied[4:]) < (born[4:]))
        if 0 <= years < 130:
            return f"{years} y"
    return ""


def study_header(dataset: Any) -> dict[str, str]:
    """What the worklist shows about a study besides its order: age, sex, and a description."""
    sex = str(dataset.get("PatientSex", "") or "").strip().upper()[:1]
    description = str(dataset.get("StudyDescription", "") or dataset.get("SeriesDescription", "") or "").strip()
    if not description:
        parts = [str(dataset.get(k, "") or "").strip() for k in ("Modality", "BodyPartExamined", "ViewPosition")]
        description = " ".join(p for p in parts if p)
    return {"age": _age(dataset), "sex": sex if sex in ("M", "F", "O") else "", "description": description[:64]}
