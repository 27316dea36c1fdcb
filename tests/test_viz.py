"""PNG grids: pixel values of both contrasts, layout, and a written file that reads back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from distillmem.viz import image_grid, save_image_grid


def _cell(canvas: np.ndarray, j: int, n_columns: int, side: int, gap: int = 2) -> np.ndarray:
    """Pixels (side, side, C) of image j in a grid of cells side + gap wide."""
    top, left = gap + (j // n_columns) * (side + gap), gap + (j % n_columns) * (side + gap)
    return canvas[top : top + side, left : left + side]


def _ramp(low: float, high: float) -> torch.Tensor:
    """One (1, 1, 32, 32) image (no zoom) whose 1024 pixels run from low to high."""
    return torch.linspace(low, high, 32 * 32, dtype=torch.float64).reshape(1, 1, 32, 32)


def test_minmax_maps_each_image_to_its_own_full_range():
    # Two images far outside [0, 1] with different offsets and spans.
    images = torch.cat([_ramp(2.0, 4.0), _ramp(-7.0, -6.5)])
    canvas = image_grid(images, n_columns=2, contrast="minmax")
    for j in range(2):
        cell = _cell(canvas, j, 2, 32)[..., 0].reshape(-1)
        assert cell[0] == 0 and cell[-1] == 255  # the minimum is black, the maximum white
        expected = np.round(np.linspace(0.0, 1.0, 1024) * 255)
        assert np.abs(cell.astype(float) - expected).max() <= 1


def test_minmax_is_invariant_to_offset_and_positive_scale():
    image = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    base = image_grid(image, n_columns=3, contrast="minmax")
    moved = image_grid(5.0 * image - 3.0, n_columns=3, contrast="minmax")
    assert np.abs(moved.astype(int) - base.astype(int)).max() <= 1  # equal up to rounding at .5


def test_clip_shows_the_unit_scale_and_clips_the_rest():
    canvas = image_grid(_ramp(-1.0, 2.0), n_columns=1, contrast="clip")
    cell = _cell(canvas, 0, 1, 32)[..., 0].reshape(-1).astype(float)
    values = np.linspace(-1.0, 2.0, 1024)
    assert np.abs(cell - np.round(np.clip(values, 0, 1) * 255)).max() <= 1
    # Inside [0, 1] clip leaves values alone; minmax would stretch them.
    inside = _ramp(0.25, 0.75)
    clipped = _cell(image_grid(inside, 1, "clip"), 0, 1, 32)[..., 0]
    stretched = _cell(image_grid(inside, 1, "minmax"), 0, 1, 32)[..., 0]
    assert (clipped.min(), clipped.max()) == (64, 191)
    assert (stretched.min(), stretched.max()) == (0, 255)


def test_layout_zoom_and_gaps():
    images = torch.zeros(5, 1, 8, 8, dtype=torch.float64)
    images[3] = 1.0
    canvas = image_grid(images, n_columns=2)
    # 8x8 digits are zoomed 4x to 32 pixels; cells are 34 wide, plus a 2-pixel border.
    assert canvas.shape == (3 * 34 + 2, 2 * 34 + 2, 1) and canvas.dtype == np.uint8
    assert (_cell(canvas, 3, 2, 32) == 255).all() and (_cell(canvas, 2, 2, 32) == 0).all()
    assert (canvas[:2] == 255).all() and (_cell(canvas, 5, 2, 32) == 255).all()  # border and empty cell are white


def test_saved_png_reads_back_as_the_grid(tmp_path):
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    path = save_image_grid(images, tmp_path / "grid.png", n_columns=2, contrast="minmax")
    assert np.array_equal(np.asarray(Image.open(path)), image_grid(images, 2, "minmax"))


@pytest.mark.parametrize(
    "images, contrast, match",
    [
        (torch.zeros(2, 2, 4, 4), "clip", r"shape \(m, 1 or 3, H, W\)"),
        (torch.zeros(2, 16), "clip", r"shape \(m, 1 or 3, H, W\)"),
        (torch.zeros(2, 1, 4, 4), "bright", "contrast must be one of"),
    ],
)
def test_bad_arguments_raise(images, contrast, match):
    with pytest.raises(ValueError, match=match):
        image_grid(images, 2, contrast)
