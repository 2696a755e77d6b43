"""What ``pack`` reports: a line a pass (how it ran, what it measured) and the whole run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._words import fmt_time, plural, pool_words, reword_pool
from ..plot import pack_plot

__all__ = ["PackInterrupted", "PackReport", "PassReport", "plural"]


@dataclass
class PassReport:
    name: str
    executor: str
    n_jobs: int
    chunksize: int
    wall_time: float
    files: int
    megabytes: float
    mode: str | None = None  # a pass run as a pipeline: "fused" or "staged"
    steps: list[tuple[str, float]] = field(default_factory=list)  # each step's mean seconds a file, measured
    planned: list[tuple[str, float]] = field(default_factory=list)  # the plan's, where from the tuning cache
    planned_from: str = ""

    @property
    def files_per_s(self) -> float:
        return self.files / self.wall_time if self.wall_time > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.wall_time if self.wall_time > 0 else 0.0

    def how(self, chunks: bool = True) -> str:
        """How the pass ran: ``serial``, ``thread pool, 2 workers, chunksize 1``; staged, each step's pool."""
        if self.mode == "staged":
            return "staged: " + " / ".join(reword_pool(part) for part in self.executor.split(" / "))
        return pool_words(self.executor, self.n_jobs, self.chunksize if chunks and self.executor != "serial" else None)

    def line(self) -> str:
        how = self.how()
        reads = f"{self.mb_per_s:7.1f} MB/s" if self.megabytes > 0 else f"{'(no reads)':>12}"
        text = f"{self.name:<18} {how:<38} {self.wall_time:7.2f} s  {self.files_per_s:6.2f} files/s  {reads}"
        text += _steps_line(self.steps, "a file, measured")
        if self.planned:
            text += _steps_line(self.planned, f"a file, planned from {self.planned_from}")
        return text


def _steps_line(steps: list[tuple[str, float]], what: str) -> str:
    total = sum(t for _, t in steps)
    if total <= 0:
        return ""
    return "\n" + " " * 19 + ", ".join(f"{n} {fmt_time(t)} ({t / total:.0%})" for n, t in steps) + " " + what


@dataclass
class PackReport:
    passes: list[PassReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    wall_time: float = 0.0
    dry_run: bool = False
    kept: list[str] = field(default_factory=list)  # atlases up to date in the output folder, not made again
    unlisted: list[str] = field(default_factory=list)  # atlases there the manifest does not list (left as they are)
    notes: list[str] = field(default_factory=list)  # worth knowing, not a problem (a channel missing at a timepoint)

    @property
    def ok(self) -> bool:
        return not self.errors

    def plot(self, path: str | Path) -> Path:
        """Each pass as a bar (its time, how it ran, files a second), to ``path``. Needs
        ``pip install "autopar[plot]"``."""
        return pack_plot(self, path)

    def explain(self) -> str:
        """Each pass (how it ran, its time and throughput), what was written and kept, the problems."""
        lines = [f"{'pass':<18} {'how it ran':<38} {'time':>9}  {'throughput':>14}  {'input':>12}"]
        lines.extend(p.line() for p in self.passes)
        verb = "would write" if self.dry_run else "wrote"
        done = f"{verb} {plural(len(self.written), 'atlas', 'atlases')}"
        if self.kept:
            done += f", {'would keep' if self.dry_run else 'kept'} {len(self.kept)} up to date"
        lines.append(f"{done} in {fmt_time(self.wall_time)}")
        if self.unlisted:
            shown = ", ".join(self.unlisted[:5]) + (", ..." if len(self.unlisted) > 5 else "")
            lines.append(
                f"{plural(len(self.unlisted), 'atlas', 'atlases')} in the output folder not in the manifest "
                f"(left as they are): {shown}"
            )
        lines.extend(f"note: {n}" for n in self.notes)
        if self.errors:
            lines.append(f"{plural(len(self.errors), 'problem')}:")
            lines.extend(f"  ! {e}" for e in self.errors)
        return "\n".join(lines)

    def summary(self) -> str:
        """The same as :meth:`explain` (its earlier name)."""
        return self.explain()

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready): the passes, what was written and kept, the problems."""
        d = asdict(self)
        d["ok"] = self.ok
        for p, src in zip(d["passes"], self.passes):
            p["how"] = src.how()
        return d


class PackInterrupted(KeyboardInterrupt):
    """Ctrl-C during a pack, after its pools were stopped: how far it got, in one line."""

    def __init__(self, written: int, total: int, dry_run: bool = False) -> None:
        super().__init__(written, total, dry_run)
        self.written, self.total, self.dry_run = written, total, dry_run

    def __str__(self) -> str:
        if self.dry_run:
            return "interrupted: a dry run, nothing was written"
        return (
            f"interrupted: {self.written} of {plural(self.total, 'atlas', 'atlases')} written; no manifest; "
            "run the same command again to finish"
        )
