"""A contact sheet of packed atlases: each stack's maximum projection, a row per timepoint, a
column per channel and one for the channels merged (Pillow and NumPy only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .._atomic import atomic_write
from .passes import ImageError

__all__ = ["contact_sheet", "max_projection"]

# Merged colours: channel 0 green, 1 magenta, 2 cyan, 3 yellow (as RGB weights).
MERGE = ((0.0, 1.0, 0.0), (1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0))
LABEL = 18  # pixels for the labels above and beside the thumbnails


def max_projection(atlas_path: str | Path, cols: int, rows: int, width: int, height: int, depth: int) -> np.ndarray:
    """The maximum over an atlas's tiles (its z slices): a height x width uint8 image."""
    try:
        with Image.open(atlas_path) as im:
            atlas = np.asarray(im.convert("L"))
    except (OSError, ValueError) as exc:
        raise ImageError(f"{atlas_path}: cannot read the atlas ({exc})") from exc
    if atlas.shape[0] < rows * height or atlas.shape[1] < cols * width:
        raise ImageError(f"{atlas_path}: {atlas.shape[1]}x{atlas.shape[0]} is smaller than {cols}x{rows} tiles of {width}x{height}")
    tiles = atlas[: rows * height, : cols * width].reshape(rows, height, cols, width).swapaxes(1, 2)
    return tiles.reshape(rows * cols, height, width)[:depth].max(axis=0)


def _display(img: np.ndarray) -> np.ndarray:
    """Auto-contrast for viewing: the 0.5th percentile to black, the 99.9th to white (a maximum
    projection lifts the noise of every slice, which this puts back down)."""
    lo, hi = np.percentile(img, (0.5, 99.9))
    if hi <= lo:
        return img
    return (np.clip((img.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _thumb(img: np.ndarray, width: int) -> Image.Image:
    pil = Image.fromarray(_display(img))
    height = max(1, round(img.shape[0] * width / img.shape[1]))
    return pil.resize((width, height), Image.Resampling.LANCZOS)


def contact_sheet(output_dir: str | Path, path: str | Path | None = None, thumb: int = 192) -> Path:
    """Write a PNG contact sheet of the atlases ``autopar pack`` wrote to ``output_dir``
    (read through its manifest.json) to ``path`` (default: OUTPUT/preview.png)."""
    out = Path(output_dir)
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise ImageError(f"{out}: no readable manifest.json ({exc})") from exc
    cols, rows = manifest["tile_layout"]["cols"], manifest["tile_layout"]["rows"]
    size = manifest["volume_size"]
    channels = manifest["channels"]
    timepoints = manifest["timepoints"]
    merged = channels > 1
    tile_h = max(1, round(size["height"] * thumb / size["width"]))
    n_cols = channels + merged
    sheet = Image.new("RGB", (LABEL * 5 + n_cols * (thumb + 4), LABEL + len(timepoints) * (tile_h + 4)), "black")
    draw = ImageDraw.Draw(sheet)
    heads = [f"c{c}" for c in range(channels)] + (["merged"] if merged else [])
    for j, head in enumerate(heads):
        draw.text((LABEL * 5 + j * (thumb + 4) + 4, 2), head, fill="white")
    for i, tp in enumerate(timepoints):
        y = LABEL + i * (tile_h + 4)
        draw.text((2, y + tile_h // 2 - 6), str(tp["time"])[-9:], fill="white")
        rgb = np.zeros((tile_h, thumb, 3), dtype=np.float32)
        for c in range(channels):
            entry = tp["files"].get(f"c{c}")
            if entry is None:
                continue
            proj = max_projection(out / entry["file"], cols, rows, size["width"], size["height"], size["depth"])
            small = _thumb(proj, thumb)
            sheet.paste(small.convert("RGB"), (LABEL * 5 + c * (thumb + 4), y))
            rgb += np.asarray(small, dtype=np.float32)[:, :, None] * np.array(MERGE[c % len(MERGE)], dtype=np.float32)
        if merged:
            merged_img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
            sheet.paste(merged_img, (LABEL * 5 + channels * (thumb + 4), y))
    target = Path(path) if path is not None else out / "preview.png"
    with atomic_write(target, "wb") as fh:
        sheet.save(fh, format="PNG")
    return target
