"""to_model_input: torchxrayvision's scaling, single channel, centre crop and resize, and refusal of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from radtriage.model.preprocessing import PREPROCESSING_VERSION, XRV_RANGE, to_model_input


def test_the_version_is_pinned() -> None:
    # Changing this string invalidates every trained artefact; it must be a deliberate act.
    assert PREPROCESSING_VERSION == "xrv-v1"


@pytest.mark.parametrize(("shape", "size"), [((300, 200), 224), ((180, 512), 224), ((64, 64), 32)])
def test_output_is_float32_single_channel_square_in_xrv_range(shape: tuple[int, int], size: int) -> None:
    image = np.random.default_rng(0).random(shape)
    result = to_model_input(image, size)
    assert result.dtype == np.float32
    assert result.shape == (1, size, size)
    assert result.flags["C_CONTIGUOUS"]
    assert -XRV_RANGE <= result.min() and result.max() <= XRV_RANGE


def test_scaling_maps_0_to_minus_1024_and_1_to_plus_1024() -> None:
    # An image already at the model size is only rescaled (no crop, no interpolation): check the exact mapping.
    image = np.linspace(0.0, 1.0, 16 * 16, dtype=np.float32).reshape(16, 16)
    result = to_model_input(image, 16)
    np.testing.assert_allclose(result[0], (2.0 * image - 1.0) * 1024.0, rtol=0, atol=1e-3)
    assert result[0, 0, 0] == pytest.approx(-1024.0)
    assert result[0, -1, -1] == pytest.approx(1024.0)


@pytest.mark.parametrize("orientation", ["wide", "tall"])
def test_the_long_dimension_is_cropped_evenly_around_the_centre(orientation: str) -> None:
    # 90 x 270: a black central square between two white margins that the crop must remove entirely.
    image = np.ones((90, 270), dtype=np.float32)
    image[:, 90:180] = 0.0
    if orientation == "tall":
        image = image.T.copy()
    result = to_model_input(image, 45)
    np.testing.assert_allclose(result, -1024.0, atol=1e-3)


def test_orientation_is_kept() -> None:
    # Dark left, bright right; dark top, bright bottom: no flip or transpose anywhere.
    rows = np.linspace(0, 1, 200)[:, None]
    cols = np.linspace(0, 1, 200)[None, :]
    result = to_model_input((rows + cols) / 2.0, 50)[0]
    assert result[:, :5].mean() < result[:, -5:].mean()
    assert result[:5, :].mean() < result[-5:, :].mean()


def test_integer_and_boolean_images_in_range_are_accepted() -> None:
    assert to_model_input(np.eye(8, dtype=np.uint8), 8).max() == pytest.approx(1024.0)
    assert to_model_input(np.eye(8, dtype=bool), 8).min() == pytest.approx(-1024.0)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.full((8, 8), np.nan), "non-finite"),
        (np.where(np.eye(8) > 0, np.inf, 0.5), "non-finite"),
        (np.full((8, 8), 1.5), r"\[0, 1\]"),
        (np.full((8, 8), -0.01), r"\[0, 1\]"),
        (np.zeros((8, 8, 3)), "2-D"),
        (np.zeros((8,)), "2-D"),
        (np.zeros((0, 8)), "empty"),
        (np.zeros((8, 8), dtype=complex), "real"),
    ],
)
def test_bad_images_are_refused_not_repaired(image: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_model_input(image)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_bad_sizes_are_refused(size: object) -> None:
    with pytest.raises(ValueError, match="size"):
        to_model_input(np.zeros((8, 8)), size)  # type: ignore[arg-type]


def test_importing_torchxrayvision_leaves_the_warning_filters_alone() -> None:
    # torchxrayvision.models calls warnings.filterwarnings("ignore") at import; radtriage must not let it leak.
    code = (
        "import warnings\n"
        "before = list(warnings.filters)\n"
        "from radtriage.model._xrv import import_xrv\n"
        "import_xrv()\n"
        "assert list(warnings.filters) == before, warnings.filters[:3]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=Path(__file__).parents[2])
