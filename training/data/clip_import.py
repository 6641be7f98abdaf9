"""`avserve data import`: the clips an official list names, found on disk, probed, written as a manifest.

    result = import_dataset("audioset", [ListFile.parse("train=balanced_train_segments.csv")],
                            clips_dir, out_dir, ImportOptions(ontology=...))

writes out_dir/manifest.csv and classes.txt (read by training/data/records.py like any other
dataset) and out_dir/import_report.csv: one row per listed clip that is not in the manifest, or
is in it with a caveat, and why. Nothing listed is dropped without a row there.

Files are matched to listed clips by name (downloaders name them differently): the video id,
and where the name carries them, the segment's start (and end) seconds after the last
underscores: `<id>_<start>_<end>.<ext>`, `<id>_<start>.<ext>`, `<id>.<ext>`, each also with
AudioSet's `Y` prefix. A YouTube id may itself hold "_" and "-", so every reading of a name is
indexed and a clip takes the most specific one that matches it (a window over a start over the
bare id over the Y-prefixed forms). A file named by its window is that segment; a file named by
the id alone is the segment too, unless the listing says its files are whole videos (EPIC, or
--full-videos), in which case the clip's start/end go into the manifest.
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from training.data.importers import ImportOptions, ListedClip, ListFile, Listing, milliseconds, read_lists
from training.data.records import CLASSES_FILE, MANIFEST_FILE, MEDIA_EXTENSIONS, SPLITS, DatasetError

if TYPE_CHECKING:
    from avserve.media import MediaInfo

REPORT_FILE = "import_report.csv"
REPORT_COLUMNS = ("problem", "source", "clip_id", "path", "detail")
# Problems whose clips are still in the manifest (the report says what to check).
KEPT_PROBLEMS = frozenset({"ambiguous_files"})

# Probing in avserve.media.workers' supervised processes: a file that crashes or hogs a
# decoder costs its own row in the report, not the whole import. The gateway's default bounds
# (avserve/gateway/settings.py), per call.
PROBE_MEMORY_BYTES = 1536 * 2**20
PROBE_CPU_SECONDS = 60.0
PROBE_TIMEOUT_SECONDS = 120.0
# Files per worker call: one call costs about as much as probing a small file (IPC, limits), so
# calls carry several (loadtests/bench_import.py); a call that fails is retried file by file.
PROBE_BATCH = 16
# A whole-video window may end this far past the probed duration (timestamps are rounded,
# container durations approximate) before the clip is reported as cut short.
WINDOW_SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class Problem:
    problem: str  # missing | unreadable | ambiguous_files | shared_file | window_past_end | duplicate | unlabelled | empty_window
    source: str  # list file:line
    clip_id: str
    path: str  # the file concerned ("" when there is none)
    detail: str


@dataclass
class ImportResult:
    out_dir: Path
    listed: int  # listed rows read (clips + skipped rows)
    written: int  # clips in the manifest
    splits: Counter[str]
    classes: int
    problems: list[Problem] = field(default_factory=list)
    probed: bool = True

    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST_FILE

    @property
    def report(self) -> Path:
        return self.out_dir / REPORT_FILE

    def summary(self, examples: int = 3) -> str:
        """What was written and what was not, with a few examples of each problem."""
        order = [*SPLITS, *sorted(set(self.splits) - set(SPLITS))]
        splits = ", ".join(f"{name} {self.splits[name]}" for name in order if name in self.splits) or "none"
        lines = [
            f"{self.listed} listed, {self.written} clips written to {self.manifest} ({splits}; {self.classes} classes)",
        ]
        if not self.probed:
            lines.append("files were not probed (--no-probe): unreadable files are not detected")
        counts = Counter(problem.problem for problem in self.problems)
        for name, count in counts.most_common():
            kept = " (kept in the manifest)" if name in KEPT_PROBLEMS else ""
            lines.append(f"{name}: {count}{kept}")
            for problem in [p for p in self.problems if p.problem == name][:examples]:
                lines.append(f"  {problem.source}: {problem.clip_id}: {problem.detail}")
        lines.append(f"report: {self.report} ({len(self.problems)} rows)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- matching files


_NUMBER = r"\d+(?:\.\d+)?"
_WINDOW_NAME = re.compile(rf"(.+)_({_NUMBER})_({_NUMBER})")
_START_NAME = re.compile(rf"(.+)_({_NUMBER})")
# Lookup order, most specific first; a "Y" form is AudioSet's prefix ("Y--PJHxphWEs.wav").
_RANKS = (("window", False), ("window", True), ("start", False), ("start", True), ("video", False), ("video", True))


class ClipIndex:
    """Every media file under a directory, by each way its name can be read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = 0
        self._by_key: dict[tuple, list[Path]] = defaultdict(list)
        for directory, subdirectories, names in os.walk(root):
            subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
            for name in sorted(names):
                path = Path(directory, name)
                if name.startswith(".") or path.suffix.lower() not in MEDIA_EXTENSIONS:
                    continue
                self.files += 1
                for key in _name_keys(path.stem):
                    self._by_key[key].append(path)

    def find(self, clip: ListedClip) -> tuple[list[Path], str]:
        """(the files at the most specific reading that matches, that reading's kind:
        window | start | video); ([], "") when none does."""
        for kind, prefixed in _RANKS:
            if kind == "window":
                key = (kind, prefixed, clip.video_id, milliseconds(clip.start), milliseconds(clip.end))
            elif kind == "start":
                key = (kind, prefixed, clip.video_id, milliseconds(clip.start))
            else:
                key = (kind, prefixed, clip.video_id)
            if None not in key and key in self._by_key:
                return sorted(self._by_key[key]), kind
        return [], ""


def _name_keys(stem: str) -> list[tuple]:
    keys = []
    readings = [(False, stem)] + ([(True, stem[1:])] if stem.startswith("Y") and len(stem) > 1 else [])
    for prefixed, name in readings:
        if match := _WINDOW_NAME.fullmatch(name):
            keys.append(("window", prefixed, match[1], milliseconds(float(match[2])), milliseconds(float(match[3]))))
        if match := _START_NAME.fullmatch(name):
            keys.append(("start", prefixed, match[1], milliseconds(float(match[2]))))
        keys.append(("video", prefixed, name))
    return keys


@dataclass
class _Matched:
    clip: ListedClip
    path: Path
    windowed: bool  # the manifest row gets the clip's start/end (the file is the whole video)
    modalities: str | None = None


def _match(listing: Listing, index: ClipIndex, problems: list[Problem]) -> list[_Matched]:
    matched: list[_Matched] = []
    for clip in listing.clips:
        paths, kind = index.find(clip)
        if not paths:
            problems.append(Problem("missing", clip.source, clip.clip_id, "", f"no file for {_describe(clip)} under {index.root}"))
            continue
        if len(paths) > 1:
            others = ", ".join(str(p) for p in paths[1:])
            problems.append(Problem("ambiguous_files", clip.source, clip.clip_id, str(paths[0]), f"also matches {others}; the first is used"))
        matched.append(_Matched(clip, paths[0], windowed=kind == "video" and listing.full_videos))

    # A segment file can only be one clip: a file several listed clips match (a video id named
    # alone, with several segments listed) cannot say which one it holds.
    users: dict[Path, list[_Matched]] = defaultdict(list)
    for entry in matched:
        if not entry.windowed:
            users[entry.path].append(entry)
    shared = {path for path, entries in users.items() if len(entries) > 1}
    for path in sorted(shared):
        sources = ", ".join(entry.clip.source for entry in users[path])
        for entry in users[path]:
            problems.append(Problem("shared_file", entry.clip.source, entry.clip.clip_id, str(path),
                                    f"the file is named by the video id alone and {len(users[path])} listed segments "
                                    f"match it ({sources}): it cannot tell which; name it <id>_<start>_<end>"))  # fmt: skip
    return [entry for entry in matched if entry.path not in shared]


def _describe(clip: ListedClip) -> str:
    window = f" {clip.start:g}-{clip.end:g} s" if clip.start is not None and clip.end is not None else ""
    return f"video {clip.video_id!r}{window}"


# --------------------------------------------------------------------------- probing


def _probe_all(matched: list[_Matched], workers: int, progress: bool, problems: list[Problem]) -> list[_Matched]:
    """The clips whose file decodes (and is long enough for its window), with their modalities."""
    from avserve.media.workers import MediaWorkersUnavailable

    try:
        results = asyncio.run(_probe_paths(sorted({entry.path for entry in matched}), workers, progress))
    except MediaWorkersUnavailable as error:
        raise DatasetError(f"cannot start the probing workers ({error}); --no-probe skips probing") from None
    readable = []
    for entry in matched:
        info = results[entry.path]
        if isinstance(info, str):
            problems.append(Problem("unreadable", entry.clip.source, entry.clip.clip_id, str(entry.path), info))
            continue
        if entry.windowed and info.duration is not None and entry.clip.end > info.duration + WINDOW_SLACK_SECONDS:
            problems.append(Problem("window_past_end", entry.clip.source, entry.clip.clip_id, str(entry.path),
                                    f"the clip ends at {entry.clip.end:g} s, the file lasts {info.duration:g} s"))  # fmt: skip
            continue
        entry.modalities = "audio+video" if info.has_audio and info.has_video else "audio" if info.has_audio else "video"
        readable.append(entry)
    return readable


async def _probe_paths(paths: list[Path], workers: int, progress: bool) -> dict[Path, MediaInfo | str]:
    """Each path's MediaInfo, or why it cannot be used ("<error code>: <message>")."""
    from tqdm import tqdm

    from avserve.media.workers import MediaWorkers

    pool = MediaWorkers(processes=workers, memory_bytes=PROBE_MEMORY_BYTES, cpu_seconds=PROBE_CPU_SECONDS)
    pool.start()
    results: dict[Path, MediaInfo | str] = {}
    batches = iter([paths[i : i + PROBE_BATCH] for i in range(0, len(paths), PROBE_BATCH)])
    with tqdm(total=len(paths), desc="probe", unit="file", disable=not progress) as bar:

        async def drain() -> None:
            for batch in batches:  # one iterator shared by the tasks: each batch probed once
                results.update(await _probe_batch(pool, batch))
                bar.update(len(batch))

        try:
            await asyncio.gather(*(drain() for _ in range(workers)))
        finally:
            pool.close()
    return results


async def _probe_batch(pool, batch: list[Path]) -> dict[Path, MediaInfo | str]:
    """A batch in one worker call; when the call fails as a whole (a file crashed the decoder or
    used up the call's CPU, memory or time), each file again on its own, so the failure lands
    on the file that caused it."""
    from avserve.media import MediaError
    from avserve.media.workers import MediaWorkersUnavailable

    try:
        values = (await pool.run(probe_files, batch, timeout=PROBE_TIMEOUT_SECONDS)).value
        return dict(zip(batch, values))
    except MediaWorkersUnavailable:
        raise
    except (MediaError, TimeoutError, Exception) as error:
        if len(batch) > 1:
            results: dict[Path, MediaInfo | str] = {}
            for path in batch:
                results.update(await _probe_batch(pool, [path]))
            return results
        if isinstance(error, MediaError):
            return {batch[0]: str(error)}
        if isinstance(error, TimeoutError):
            return {batch[0]: f"timeout: probing took longer than {PROBE_TIMEOUT_SECONDS:g} s"}
        return {batch[0]: f"probe failed: {type(error).__name__}: {error}"}


def probe_files(paths: list[Path]) -> list[MediaInfo | str]:
    """In a media worker: each file's MediaInfo, or the MediaError that says why it cannot be used."""
    from avserve.media import MediaError, probe

    results: list[MediaInfo | str] = []
    for path in paths:
        try:
            results.append(probe(path))
        except MediaError as error:
            results.append(str(error))
    return results


# --------------------------------------------------------------------------- writing


def import_dataset(
    format_name: str,
    lists: list[ListFile],
    clips_dir: Path,
    out_dir: Path,
    options: ImportOptions = ImportOptions(),
    *,
    probe: bool = True,
    workers: int = 4,
    progress: bool = True,
) -> ImportResult:
    """Read the lists, find and probe their clips, write manifest.csv, classes.txt and the report.
    Raises DatasetError for a malformed list (file:line) or when no listed clip is usable (the
    report is written first, so it says why)."""
    clips_dir = Path(clips_dir).expanduser().absolute()
    out_dir = Path(out_dir).expanduser().absolute()
    if not clips_dir.is_dir():
        raise DatasetError("no such clips directory", path=clips_dir)
    listing = read_lists(format_name, lists, options)
    problems = [Problem(s.problem, s.source, s.clip_id, "", s.detail) for s in listing.skipped]
    matched = _match(listing, ClipIndex(clips_dir), problems)
    if probe and matched:
        matched = _probe_all(matched, workers, progress, problems)

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_report(out_dir / REPORT_FILE, problems)
    result = ImportResult(
        out_dir=out_dir,
        listed=len(listing.clips) + len(listing.skipped),
        written=len(matched),
        splits=Counter(entry.clip.split or "(none)" for entry in matched),
        classes=len(listing.classes),
        problems=problems,
        probed=probe,
    )
    if not matched:
        raise DatasetError(f"none of the {result.listed} listed clips is usable; see {result.report}", path=clips_dir)
    # classes.txt before manifest.csv: the manifest is the last thing written, so a failed
    # import leaves no manifest that looks complete.
    (out_dir / CLASSES_FILE).write_text("".join(f"{name}\n" for name in listing.classes), encoding="utf-8")
    _write_manifest(out_dir / MANIFEST_FILE, matched, listing.multilabel)
    return result


def _write_manifest(path: Path, matched: list[_Matched], multilabel: bool) -> None:
    label_column = "labels" if multilabel else "label"
    columns = ("path", label_column, "split", "start", "end", "modalities", "clip_id")
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for entry in matched:
            clip = entry.clip
            writer.writerow([
                _manifest_path(entry.path, path.parent),
                ";".join(clip.labels),  # records.py splits on ";" (labels may hold commas)
                clip.split or "",
                _seconds_text(clip.start) if entry.windowed else "",
                _seconds_text(clip.end) if entry.windowed else "",
                entry.modalities or "",
                clip.clip_id,
            ])  # fmt: skip
    partial.replace(path)


def _manifest_path(file: Path, out_dir: Path) -> str:
    """Relative to the manifest when the clips sit inside its directory (the dataset moves as
    one), else absolute."""
    return file.relative_to(out_dir).as_posix() if file.is_relative_to(out_dir) else str(file)


def _seconds_text(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.3f}".rstrip("0").rstrip(".")


def _write_report(path: Path, problems: list[Problem]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(REPORT_COLUMNS)
        writer.writerows((p.problem, p.source, p.clip_id, p.path, p.detail) for p in problems)
