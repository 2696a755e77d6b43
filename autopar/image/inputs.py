"""What ``pack`` checks before any work or write: its settings, the input folder's stacks,
the output folder."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .passes import FILE_PATTERN, STRETCH_MODES, TIFF_SUFFIXES, Z_CROP_METHODS, ImageError, parse_name

__all__ = ["check_options", "check_output", "find_stacks", "NAMING"]

NAMING = "*_ch<N>_stack<NNNN>*.tif (or .tiff, any case)"
EXECUTORS = ("auto", "serial", "thread", "process", "dask")


def check_options(
    *, executor: str, jobs: Any, stretch: str, z_crop: str, z_threshold: Any, quality: Any, method: Any,
    scheduler: str | None,
) -> None:
    """Every setting of pack, before anything is read or written: ValueError saying what is
    wrong and what to give instead."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    if executor == "dask" and scheduler is None:
        raise ValueError("executor='dask' needs scheduler='tcp://host:port'")
    if scheduler is not None and executor not in ("auto", "dask"):
        raise ValueError(f"scheduler= goes with executor 'auto' or 'dask', not {executor!r}")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be a whole number of workers, 1 or more (or None: chosen per pass), got {jobs!r}")
    if stretch not in STRETCH_MODES:
        raise ValueError(f"stretch must be one of {STRETCH_MODES}, got {stretch!r}")
    if z_crop not in Z_CROP_METHODS:
        raise ValueError(f"z_crop must be one of {Z_CROP_METHODS}, got {z_crop!r}")
    if z_threshold is not None and (not isinstance(z_threshold, (int, float)) or not math.isfinite(z_threshold)):
        raise ValueError(f"z_threshold must be a finite number (or None: the method's default), got {z_threshold!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= 100:
        raise ValueError(f"quality must be a whole number from 0 to 100 (WebP quality, default 87), got {quality!r}")
    if isinstance(method, bool) or not isinstance(method, int) or not 0 <= method <= 6:
        raise ValueError(f"method must be a whole number from 0 to 6 (WebP effort, default 6), got {method!r}")


def find_stacks(src: Path) -> tuple[list[str], list[str]]:
    """The stacks of ``src`` by name (largest first) and the problems with its TIFF files
    (names that do not follow the naming, two files for one atlas). No stack: ImageError,
    saying what pack looks for."""
    if not src.exists():
        raise ImageError(f"{src}: no such input folder; give the folder that holds the {NAMING} stacks")
    if not src.is_dir():
        raise ImageError(f"{src} is a file, not a folder; give the folder that holds the stacks (pack reads every {NAMING} in it)")
    try:
        tiffs = sorted(p for p in src.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith("."))
    except OSError as exc:
        raise ImageError(f"{src}: cannot list the input folder ({exc})") from exc
    paths: list[str] = []
    problems: list[str] = []
    seen: dict[tuple[int, str], Path] = {}
    for p in tiffs:
        if not FILE_PATTERN.match(p.name):
            problems.append(f"{p}: the name does not match {NAMING}; skipped")
            continue
        key = parse_name(p)
        if key in seen:
            problems.append(f"{p}: channel {key[0]} of {key[1]} again (already {seen[key].name}); skipped")
            continue
        seen[key] = p
        paths.append(str(p))
    if not paths:
        found = f"its {len(tiffs)} TIFF file(s) ({', '.join(p.name for p in tiffs[:3])}{', ...' if len(tiffs) > 3 else ''}) " \
            "do not follow the naming" if tiffs else "no TIFF files in it"
        raise ImageError(
            f"{src}: nothing to pack, {found}; pack reads stacks named {NAMING}, "
            "e.g. cell_ch0_stack0000.tif for channel 0 at timepoint 0"
        )
    paths.sort(key=lambda p: os.path.getsize(p), reverse=True)
    return paths, problems


def check_output(out: Path, dry_run: bool) -> None:
    """The output folder: a folder (made if missing, not on a dry run) that can be written."""
    if out.exists() and not out.is_dir():
        raise ImageError(f"{out} is a file; give a folder for the atlases and manifest.json (it is made if missing)")
    if dry_run:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".autopar-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ImageError(f"{out}: cannot write to the output folder ({exc})") from exc
