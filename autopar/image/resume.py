"""Resume: which atlases of an output folder are up to date, so a rerun makes only the rest.

``OUTPUT/autopar-pack.json`` records what each atlas was made from; an atlas is kept when its
record equals the new run's and the file is a complete WebP. The record is written before
pass 2, after the atlases to be made again are removed: an atlas on disk with a record was
made as that record says, whenever a run is stopped.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Iterable

from .._atomic import atomic_write
from .passes import RenderJob, output_name

__all__ = ["RECORD", "complete_webp", "entry", "outdated", "read_record", "unlisted", "up_to_date", "write_record"]

RECORD = "autopar-pack.json"
FORMAT = 1  # raised whenever pass 2's bytes for the same inputs and settings change
SETTINGS = ("stretch", "z_crop", "z_threshold", "per_image_contrast", "quality", "method", "lossless")


def entry(job: RenderJob, crop: tuple[int, int], settings: dict[str, Any]) -> dict[str, Any]:
    """What an atlas is made from, as JSON gives it back (lists, exact floats)."""
    st = os.stat(job.path)
    made_from = {
        "input": os.path.basename(job.path),  # the folder may move: its name, size and time say which file
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "global_z_crop": list(crop),
        "slices": [job.z_start, job.z_end],
        "limits": [job.limits.p_low, job.limits.p_high],
        "settings": {k: settings[k] for k in SETTINGS},
    }
    return json.loads(json.dumps(made_from))


def read_record(out: Path) -> dict[str, Any]:
    """The atlases' records of the last pack into ``out`` (none: empty)."""
    try:
        data = json.loads((out / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("atlases"), dict):
        return {}
    return data["atlases"]


def complete_webp(path: Path) -> bool:
    """A whole WebP file: its RIFF header's length is the file's."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return False
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return False
    return struct.unpack("<I", head[4:8])[0] + 8 == size


def outdated(out: Path, jobs: list[RenderJob], entries: dict[str, Any], force: bool) -> list[RenderJob]:
    """The jobs whose atlas must be made (again): all with ``force``; else those with no
    record, another record, or no complete file."""
    if force:
        return list(jobs)
    old = read_record(out)
    todo = []
    for job in jobs:
        name = output_name(job.time_id, job.channel)
        if old.get(name) != entries[name] or not complete_webp(out / name):
            todo.append(job)
    return todo


def write_record(out: Path, todo: Iterable[RenderJob], entries: dict[str, Any]) -> None:
    """Before pass 2: remove the atlases about to be made again, then record every atlas of
    this run (one whose stale file cannot be removed is left unrecorded: made again next
    time)."""
    kept = dict(entries)
    for job in todo:
        path = out / output_name(job.time_id, job.channel)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            if path.is_file():
                kept.pop(path.name, None)
    with atomic_write(out / RECORD, "w") as fh:
        json.dump({"format": FORMAT, "atlases": kept}, fh, indent=1)


def up_to_date(out: Path, paths: list[str], settings: dict[str, Any]) -> tuple[list[str], dict[str, Any]] | None:
    """(atlas names, manifest) where the last pack into ``out`` is whole and nothing it was
    made from changed: the same input files (names, sizes, times) and settings, every atlas
    recorded complete and listed by its manifest.json with the record's limits and crop. The
    passes would make the same crop, limits and atlases: none need run. Else None."""
    old = read_record(out)
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        listed = {f["file"]: [f["p_low"], f["p_high"]] for tp in manifest["timepoints"] for f in tp["files"].values()}
        crop = manifest["global_z_crop_range"]
        recorded = {(e["input"], e["size"], e["mtime_ns"]) for e in old.values()}
        now = set()
        for p in paths:
            st = os.stat(p)
            now.add((os.path.basename(p), st.st_size, st.st_mtime_ns))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    want = json.loads(json.dumps({k: settings[k] for k in SETTINGS}))
    if not old or recorded != now or len(old) != len(paths) or set(listed) != set(old):
        return None
    # The manifest says what the record does (a run stopped before writing it left the last one).
    if any(listed[n] != e.get("limits") or crop != e.get("global_z_crop") for n, e in old.items()):
        return None
    if any(e.get("settings") != want for e in old.values()) or not all(complete_webp(out / n) for n in old):
        return None
    return sorted(old), manifest


def unlisted(out: Path, names: set[str]) -> list[str]:
    """Atlases in ``out`` (volume_*.webp) that this run does not list."""
    try:
        found = [p.name for p in out.iterdir() if p.name.startswith("volume_") and p.name.endswith(".webp")]
    except OSError:
        return []
    return sorted(n for n in found if n not in names)
