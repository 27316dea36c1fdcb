"""PNG grids of distilled images, one column per class."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .files import atomic_write_bytes

#: Small images (8x8 digits) are enlarged to at least this many pixels a side.
_MIN_SIDE = 32
_GAP = 2


CONTRASTS = ("clip", "minmax")


def image_grid(images: torch.Tensor, n_columns: int, contrast: str = "clip") -> np.ndarray:
    """Tile (m, C, H, W) images row by row into an (rows*H', cols*W', C) uint8 array.

    ``contrast="clip"`` shows the [0, 1] pixel scale and clips the rest;
    ``"minmax"`` stretches each image to its own range, which is what makes
    noise-initialised points, far outside [0, 1], visible. C must be 1 or 3.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (m, 1 or 3, H, W), found {tuple(images.shape)}")
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    m, channels, height, width = images.shape
    zoom = max(1, -(-_MIN_SIDE // max(height, width)))
    images = images.detach().cpu().to(torch.float64)
    if contrast == "minmax":
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        span = (images.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-12)
        images = (images - low) / span
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.repeat_interleave(zoom, dim=2).repeat_interleave(zoom, dim=3)
    cell_h, cell_w = height * zoom + _GAP, width * zoom + _GAP
    n_rows = -(-m // n_columns)
    canvas = np.full((n_rows * cell_h + _GAP, n_columns * cell_w + _GAP, channels), 255, dtype=np.uint8)
    for j in range(m):
        top, left = _GAP + (j // n_columns) * cell_h, _GAP + (j % n_columns) * cell_w
        canvas[top : top + height * zoom, left : left + width * zoom] = pixels[j].permute(1, 2, 0).numpy()
    return canvas


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, n_columns: int, contrast: str = "clip") -> Path:
    """Write ``image_grid(images, n_columns, contrast)`` as a PNG, atomically."""
    canvas = image_grid(images, n_columns, contrast)
    picture = Image.fromarray(canvas[..., 0] if canvas.shape[2] == 1 else canvas)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
