"""Reading the datasets users already have into one list of clip records (torch-free).

Two layouts are understood:

1. A manifest CSV, in the spirit of the VGGSound and AudioSet lists, with a header row:

       path,label,split,start,end,modalities,captions
       clips/dog_01.mp4,dog,train,,,,a dog barks at the door|barking in a hallway
       clips/street.mkv,car;horn,val,12.5,22.5,audio+video,"cars pass, one honks"

   Required: `path` and one of `label` / `labels`. Several labels per clip are separated by
   ";" or, inside a quoted field, by "," (AudioSet style: `"/m/09x0r,/m/04rlf"`); a field that
   is, as a whole, a class listed in classes.txt is one label even with a comma in it
   (VGGSound's "vehicle horn, car horn, honking"). A `labels`
   column, or any row with several labels, makes the set multi-label. Optional: `split`
   (train/val/test; "valid", "validation" and "dev" mean val), `start`/`end` in seconds
   (blank = whole clip), `modalities` (audio+video, audio, video), `captions` (or `caption`):
   text describing the clip, several captions separated by "|" (each stripped, empty ones
   dropped; blank = no text) into `ClipRecord.captions`, read by text-using pretraining only
   (training/data/text.py). Any other column is kept in `ClipRecord.extra`. Relative paths are
   resolved against the CSV's directory and every file must exist. Lines starting with "#"
   are comments.

2. Class folders: `root/<class>/<file>`, or `root/<split>/<class>/<file>` when every
   folder directly under root is a split name (train, val, test). Only media files count;
   hidden files and folders are ignored.

Class order is sorted by name unless a `classes.txt` (one class per line) sits next to the
manifest or in the class-folder root, in which case its order is the index order; this is
how a dataset keeps label indices stable when classes are added.

Every problem is a `DatasetError` whose message names the file and, for CSVs, the line.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

MEDIA_EXTENSIONS: frozenset[str] = frozenset(
    {
        # video containers (may hold audio too)
        ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".flv",
        ".3gp", ".ogv", ".wmv",
        # audio-only containers
        ".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".wma", ".aif", ".aiff",
    }
)  # fmt: skip
MODALITIES: tuple[str, ...] = ("audio+video", "audio", "video")
SPLITS: tuple[str, ...] = ("train", "val", "test")
CLASSES_FILE = "classes.txt"
MANIFEST_FILE = "manifest.csv"

_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}
_MODALITY_ALIASES = {
    "audio+video": "audio+video",
    "video+audio": "audio+video",
    "av": "audio+video",
    "audio": "audio",
    "video": "video",
}
_KNOWN_COLUMNS = frozenset({"path", "label", "labels", "split", "start", "end", "modalities", "caption", "captions"})
CAPTION_SEPARATOR = "|"


class DatasetError(ValueError):
    """A dataset that cannot be read, with the file (and line) where the problem is."""

    def __init__(self, message: str, *, path: Path | str | None = None, line: int | None = None) -> None:
        self.message = message
        self.path = Path(path) if path is not None else None
        self.line = line
        if path is not None and line is not None:
            text = f"{path}:{line}: {message}"
        elif path is not None:
            text = f"{path}: {message}"
        else:
            text = message
        super().__init__(text)


@dataclass(frozen=True)
class ClipRecord:
    path: Path  # absolute
    labels: tuple[str, ...]  # one for single-label, several for multi-label
    split: str | None = None
    start: float | None = None  # seconds; None = from the beginning
    end: float | None = None  # seconds; None = to the end
    modalities: str | None = None  # "audio+video" | "audio" | "video" | None (unknown)
    captions: tuple[str, ...] = ()  # text describing the clip (pretraining only); () = none
    # Any other manifest columns. Not part of the hash so records stay usable as dict keys.
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def label(self) -> str:
        """The single label of a single-label record."""
        if len(self.labels) != 1:
            raise ValueError(f"{self.path} has {len(self.labels)} labels; use .labels")
        return self.labels[0]

    def span(self, duration: float | None, window: float) -> tuple[float, float]:
        """[start, end] seconds of the clip: a blank end is the file's `duration`, or one `window`
        when that is unknown too. The windows training, evaluation and the data cache draw lie in it."""
        start = float(self.start or 0.0)
        if self.end is not None:
            return start, float(self.end)
        return start, float(duration) if duration else start + window


@dataclass
class RecordSet:
    records: list[ClipRecord]
    classes: list[str]  # index order: sorted unless classes.txt gives the order
    multilabel: bool
    source: Path

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ClipRecord]:
        return iter(self.records)

    def filter(self, predicate: Callable[[ClipRecord], bool]) -> RecordSet:
        """The records for which predicate is true; classes stay the same so indices do not shift."""
        return RecordSet([r for r in self.records if predicate(r)], list(self.classes), self.multilabel, self.source)

    def split(self, name: str) -> RecordSet:
        """The records of one split ("train", "val", "test"; aliases such as "validation" accepted)."""
        wanted = _SPLIT_ALIASES.get(name.strip().lower(), name.strip().lower())
        return self.filter(lambda record: record.split == wanted)

    def split_names(self) -> list[str]:
        """Splits present, train/val/test first, then any others by name."""
        present = {r.split for r in self.records if r.split is not None}
        return [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))

    def class_index(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.classes)}

    def summary(self) -> str:
        """A printable overview: clips per split, per class (by split) and per modality set."""
        splits = self.split_names()
        has_unsplit = any(r.split is None for r in self.records)
        columns = splits + (["(none)"] if has_unsplit else [])
        kind = "multi-label" if self.multilabel else "single-label"
        lines = [f"{self.source}: {len(self.records)} clips, {len(self.classes)} classes, {kind}"]
        split_counts = Counter(r.split or "(none)" for r in self.records)
        lines.append("splits: " + (", ".join(f"{name} {split_counts[name]}" for name in columns) or "none"))
        modality_counts = Counter(r.modalities or "unknown" for r in self.records)
        ordered_modalities = [m for m in (*MODALITIES, "unknown") if m in modality_counts]
        lines.append("modalities: " + (", ".join(f"{m} {modality_counts[m]}" for m in ordered_modalities) or "none"))
        windowed = sum(1 for r in self.records if r.start is not None or r.end is not None)
        if windowed:
            lines.append(f"windows: {windowed} clips have start/end times")
        captioned = [r for r in self.records if r.captions]
        if captioned:
            total = sum(len(r.captions) for r in captioned)
            lines.append(f"captions: {len(captioned)} of {len(self.records)} clips have captions ({total} captions)")

        per_class: dict[str, Counter[str]] = {name: Counter() for name in self.classes}
        for record in self.records:
            for label in record.labels:
                per_class[label][record.split or "(none)"] += 1
        name_width = max([len("class"), *(len(name) for name in self.classes)])
        widths = [max(5, len(c)) for c in [*columns, "total"]]
        header = ["class".ljust(name_width), *(c.rjust(w) for c, w in zip([*columns, "total"], widths))]
        lines += ["", "  ".join(header)]
        for name in self.classes:
            counts = [per_class[name][c] for c in columns]
            cells = [str(n).rjust(w) for n, w in zip([*counts, sum(counts)], widths)]
            lines.append("  ".join([name.ljust(name_width), *cells]))
        if self.multilabel:
            lines.append("(multi-label: a clip counts once for each of its labels)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- manifest CSV


def read_manifest(csv_path: Path | str) -> RecordSet:
    """Read a manifest CSV (see the module docstring for the format)."""
    csv_path = Path(csv_path).expanduser().absolute()
    if not csv_path.is_file():
        raise DatasetError("no such manifest file", path=csv_path)
    text = _read_utf8(csv_path)
    base_dir = csv_path.parent
    listed_classes = _listed_class_names(base_dir / CLASSES_FILE)

    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    header: list[str] | None = None
    header_line = 0
    records: list[ClipRecord] = []
    label_column = ""
    multilabel = False
    record_lines: list[int] = []
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        if header is None:
            header, header_line = _parse_header(row, csv_path, reader.line_num), line
            label_column = "labels" if "labels" in header else "label"
            multilabel = label_column == "labels"
            continue
        if len(row) != len(header):
            raise DatasetError(f"expected {len(header)} fields (as in the header on line {header_line}), got {len(row)}", path=csv_path, line=line)
        values = {name: cell.strip() for name, cell in zip(header, row)}
        record = _parse_row(values, label_column, base_dir, csv_path, line, listed_classes)
        multilabel = multilabel or len(record.labels) > 1
        records.append(record)
        record_lines.append(line)

    if header is None:
        raise DatasetError("empty manifest: no header row (expected columns path,label,...)", path=csv_path)
    if not records:
        raise DatasetError("empty manifest: a header but no clips", path=csv_path)

    classes = _class_order(base_dir / CLASSES_FILE, records, csv_path, record_lines)
    return RecordSet(records=records, classes=classes, multilabel=multilabel, source=csv_path)


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a BOM from spreadsheet exports is fine
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DatasetError(
            f"not UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start}); save the file as UTF-8",
            path=path,
            line=line,
        ) from None


def _parse_header(row: list[str], csv_path: Path, line: int) -> list[str]:
    header = [cell.strip().lower() for cell in row]
    duplicates = sorted(name for name, count in Counter(header).items() if count > 1)
    if duplicates:
        raise DatasetError(f"duplicate column(s) in header: {', '.join(duplicates)}", path=csv_path, line=line)
    if "" in header:
        raise DatasetError("empty column name in header", path=csv_path, line=line)
    missing = [name for name in ("path",) if name not in header]
    if "label" not in header and "labels" not in header:
        missing.append("label (or labels)")
    if missing:
        raise DatasetError(
            f"missing required column(s): {', '.join(missing)}; header is: {','.join(header)}", path=csv_path, line=line
        )
    if "label" in header and "labels" in header:
        raise DatasetError("has both 'label' and 'labels' columns; keep one", path=csv_path, line=line)
    if "caption" in header and "captions" in header:
        raise DatasetError("has both 'caption' and 'captions' columns; keep one", path=csv_path, line=line)
    return header


def _parse_row(
    values: dict[str, str], label_column: str, base_dir: Path, csv_path: Path, line: int, listed_classes: frozenset[str]
) -> ClipRecord:
    def fail(message: str) -> DatasetError:
        return DatasetError(message, path=csv_path, line=line)

    raw_path = values["path"]
    if not raw_path:
        raise fail("empty path")
    path = Path(raw_path).expanduser()
    path = Path(os.path.normpath(path if path.is_absolute() else base_dir / path))
    if not path.is_file():
        raise fail(f"file not found: {raw_path!r} (resolved to {path})")

    labels = _parse_labels(values[label_column], fail, listed_classes)

    start = _parse_seconds(values.get("start", ""), "start", fail)
    end = _parse_seconds(values.get("end", ""), "end", fail)
    if start is not None and start < 0:
        raise fail(f"start must be >= 0 seconds, got {values['start']!r}")
    if end is not None and end <= (start or 0.0):
        raise fail(f"end ({end:g} s) must be after start ({start or 0.0:g} s)")

    split = values.get("split", "").lower() or None
    if split is not None:
        split = _SPLIT_ALIASES.get(split, split)

    modalities = values.get("modalities", "").lower() or None
    if modalities is not None:
        if modalities not in _MODALITY_ALIASES:
            raise fail(f"modalities must be one of {', '.join(MODALITIES)} (or blank), got {values['modalities']!r}")
        modalities = _MODALITY_ALIASES[modalities]

    captions = parse_captions(values.get("captions", values.get("caption", "")))
    extra = {name: value for name, value in values.items() if name not in _KNOWN_COLUMNS}
    return ClipRecord(
        path=path, labels=labels, split=split, start=start, end=end, modalities=modalities, captions=captions, extra=extra
    )


def parse_captions(field_text: str) -> tuple[str, ...]:
    """A captions field: "a dog barks | barking  |" -> ("a dog barks", "barking")."""
    return tuple(part.strip() for part in field_text.split(CAPTION_SEPARATOR) if part.strip())


def _parse_labels(
    field_text: str, fail: Callable[[str], DatasetError], listed_classes: frozenset[str] = frozenset()
) -> tuple[str, ...]:
    if not field_text:
        raise fail("empty label")
    if field_text in listed_classes:
        return (field_text,)
    separator = ";" if ";" in field_text else ","
    labels = [label.strip() for label in field_text.split(separator)]
    if any(not label for label in labels):
        raise fail(f"empty label in {field_text!r} (labels are separated by '{separator}')")
    duplicates = sorted(label for label, count in Counter(labels).items() if count > 1)
    if duplicates:
        raise fail(f"label repeated in {field_text!r}: {', '.join(duplicates)}")
    return tuple(labels)


def _parse_seconds(text: str, column: str, fail: Callable[[str], DatasetError]) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise fail(f"{column} must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value):
        raise fail(f"{column} must be a finite number of seconds, got {text!r}")
    return value


def _listed_class_names(classes_path: Path) -> frozenset[str]:
    """The names in classes.txt (empty without one); `_class_order` checks the file itself."""
    if not classes_path.is_file():
        return frozenset()
    return frozenset(name.strip() for name in _read_utf8(classes_path).splitlines() if name.strip())


def _class_order(
    classes_path: Path, records: list[ClipRecord], source: Path, record_lines: list[int] | None = None
) -> list[str]:
    """Sorted labels, or the order of classes.txt when it exists (then every label must be in it).

    record_lines: the manifest line of each record, to point at the offending row; None for
    class folders, where the folder itself is named instead.
    """
    if not classes_path.is_file():
        return sorted({label for record in records for label in record.labels})
    lines = _read_utf8(classes_path).splitlines()
    classes: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        name = raw.strip()
        if not name:
            continue
        if name in seen:
            raise DatasetError(f"class {name!r} listed twice (first on line {seen[name]})", path=classes_path, line=number)
        seen[name] = number
        classes.append(name)
    if not classes:
        raise DatasetError("no classes listed", path=classes_path)
    for position, record in enumerate(records):
        unknown = [label for label in record.labels if label not in seen]
        if not unknown:
            continue
        if record_lines is None:
            raise DatasetError(f"class folder {unknown[0]!r} is not listed in {classes_path}", path=record.path.parent)
        raise DatasetError(
            f"label {unknown[0]!r} is not listed in {classes_path}", path=source, line=record_lines[position]
        )
    return classes


# --------------------------------------------------------------------------- class folders


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _media_files(folder: Path) -> list[Path]:
    """Media files under folder (any depth), skipping hidden files and hidden folders, sorted."""
    found = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in MEDIA_EXTENSIONS:
                found.append(Path(directory, name))
    return sorted(found)


def read_class_folders(root: Path | str) -> RecordSet:
    """root/<class>/<file>, or root/<split>/<class>/<file> when every folder under root is a split name."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DatasetError("not a directory", path=root)
    top_folders = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
    if not top_folders:
        raise DatasetError(
            "no class folders (expected root/<class>/<file> or root/<split>/<class>/<file>) and no manifest.csv", path=root
        )
    split_layout = all(p.name.lower() in _SPLIT_ALIASES for p in top_folders)
    groups: list[tuple[str | None, Path]] = (
        [(_SPLIT_ALIASES[p.name.lower()], p) for p in top_folders] if split_layout else [(None, root)]
    )

    records: list[ClipRecord] = []
    for split, group_root in groups:
        class_folders = sorted(p for p in group_root.iterdir() if p.is_dir() and _visible(p))
        if not class_folders:
            raise DatasetError("no class folders", path=group_root)
        for class_folder in class_folders:
            files = _media_files(class_folder)
            if not files:
                extensions = ", ".join(sorted(MEDIA_EXTENSIONS))
                raise DatasetError(f"class folder has no media files (looked for {extensions})", path=class_folder)
            records += [ClipRecord(path=file, labels=(class_folder.name,), split=split) for file in files]

    classes = _class_order(root / CLASSES_FILE, records, root)
    return RecordSet(records=records, classes=classes, multilabel=False, source=root)


# --------------------------------------------------------------------------- either


def load_records(source: Path | str) -> RecordSet:
    """A manifest CSV; a directory holding manifest.csv; or a class-folder directory."""
    source = Path(source).expanduser().absolute()
    if not source.exists():
        raise DatasetError("no such file or directory", path=source)
    if source.is_file():
        return read_manifest(source)
    if (source / MANIFEST_FILE).is_file():
        return read_manifest(source / MANIFEST_FILE)
    return read_class_folders(source)
