"""Reading the official clip lists of AudioSet, VGGSound, Kinetics and EPIC-Kitchens-100 (torch-free).

One reader per format, registered by name in `FORMATS`: it reads the list files a user points
at (`ListFile`: a path and the split its rows belong to) and returns a `Listing`: every clip the
lists name (which video, which window of it, its labels and split), the class order, and the
rows that cannot become clips (repeated, unlabelled, empty windows) for the import report.
Finding the clips on disk, probing them and writing the manifest is training/data/clip_import.py.

The formats, as the datasets publish them:

* AudioSet (Gemmeke et al. 2017): `balanced_train_segments.csv`, `unbalanced_train_segments.csv`,
  `eval_segments.csv`: three "#" comment lines, then `YTID, start_seconds, end_seconds,
  "mid,mid,..."`; the ontology `class_labels_indices.csv` is `index,mid,display_name`.
* VGGSound (Chen et al. 2020): `vggsound.csv`, no header, `YTID,start_seconds,label,split`;
  every clip is the 10 s from start_seconds.
* Kinetics (Kay et al. 2017; the CSV lists of the kinetics-dataset release):
  `label,youtube_id,time_start,time_end,split[,is_cc]` (test lists have no label), or the older
  JSON `{ytid: {"annotations": {"label", "segment": [start, end]}, "subset", ...}}`.
* EPIC-Kitchens-100 (Damen et al. 2022): `EPIC_100_train.csv` / `EPIC_100_validation.csv`
  (narration_id, video_id, start_timestamp, stop_timestamp as HH:MM:SS.ff, verb, verb_class,
  noun, noun_class, ...), classes from `EPIC_100_verb_classes.csv` / `EPIC_100_noun_classes.csv`
  (`id,key,instances,category`).

Every malformed row is a `DatasetError` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from training.data.records import DatasetError, _read_utf8

# VGGSound clips are the 10 seconds from start_seconds (Chen et al. 2020, section 3).
VGGSOUND_CLIP_SECONDS = 10.0

SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validate": "val", "validation": "val", "dev": "val",  # Kinetics JSON: "validate"
    "test": "test", "testing": "test", "eval": "test",  # AudioSet's evaluation set is its test set
}  # fmt: skip

EPIC_LABELS = ("verb", "noun", "action")
AUDIOSET_LABELS = ("name", "mid")


@dataclass(frozen=True)
class ListFile:
    """One official list and the split of its rows: `split` as given (SPLIT=FILE) wins over the
    list's split column, which wins over the split its file name states (`default_split`)."""

    path: Path
    split: str | None = None

    @classmethod
    def parse(cls, spec: str) -> ListFile:
        """`FILE` or `SPLIT=FILE` (train/val/test)."""
        prefix, sep, rest = spec.partition("=")
        if sep and prefix.strip().lower() in SPLIT_ALIASES:
            return cls(Path(rest).expanduser(), SPLIT_ALIASES[prefix.strip().lower()])
        if sep and not Path(spec).expanduser().exists():
            raise DatasetError(f"--list {spec!r}: {prefix!r} is not a split (train, val or test)")
        return cls(Path(spec).expanduser())

    @property
    def default_split(self) -> str | None:
        """The given split, else the one the file name states (balanced_train_segments.csv,
        eval_segments.csv, EPIC_100_validation.csv)."""
        return self.split or split_from_name(self.path)

    def where(self, line: int | str) -> str:
        return f"{self.path}:{line}"


def split_from_name(path: Path) -> str | None:
    """The split a list's file name states, if any: "unbalanced_train_segments" -> train."""
    splits = {SPLIT_ALIASES[word] for word in re.split(r"[^a-z]+", path.stem.lower()) if word in SPLIT_ALIASES}
    return splits.pop() if len(splits) == 1 else None


@dataclass(frozen=True)
class ListedClip:
    video_id: str  # what the files are named by: a YouTube id, an EPIC video_id
    start: float | None  # the clip's window in that video, seconds
    end: float | None
    labels: tuple[str, ...]
    split: str | None
    source: str  # "list.csv:LINE" (JSON lists: "list.json:'key'")
    clip_id: str  # the list's own id of the clip: the YouTube id, EPIC's narration_id


@dataclass(frozen=True)
class Skipped:
    """A listed row that does not become a clip, and why (a row of the import report)."""

    problem: str  # "duplicate" | "unlabelled" | "empty_window"
    source: str
    clip_id: str
    detail: str


@dataclass
class Listing:
    clips: list[ListedClip]
    classes: list[str]  # index order
    multilabel: bool
    skipped: list[Skipped]
    # Files named by the video id alone are whole videos, so clips get start/end; otherwise
    # they are the downloaded segments themselves (EPIC: always whole videos).
    full_videos: bool


@dataclass(frozen=True)
class ImportOptions:
    ontology: Path | None = None  # AudioSet: class_labels_indices.csv
    labels: str | None = None  # AudioSet: name | mid; EPIC: verb | noun | action
    verb_classes: Path | None = None  # EPIC_100_verb_classes.csv
    noun_classes: Path | None = None  # EPIC_100_noun_classes.csv
    full_videos: bool = False


# Options that name one format's own files.
_FORMAT_OPTIONS = {"ontology": "audioset", "verb_classes": "epic", "noun_classes": "epic"}

Reader = Callable[[list[ListFile], ImportOptions], Listing]
FORMATS: dict[str, Reader] = {}


def register(name: str) -> Callable[[Reader], Reader]:
    def add(reader: Reader) -> Reader:
        FORMATS[name] = reader
        return reader

    return add


def read_lists(format_name: str, lists: list[ListFile], options: ImportOptions) -> Listing:
    """The clips `lists` name, read as `format_name`, with duplicates set aside."""
    if format_name not in FORMATS:
        raise DatasetError(f"unknown format {format_name!r}; known: {', '.join(FORMATS)}")
    if not lists:
        raise DatasetError("no list files given")
    for listed in lists:
        if not listed.path.is_file():
            raise DatasetError("no such list file", path=listed.path)
    for option, owner in _FORMAT_OPTIONS.items():
        if getattr(options, option) is not None and format_name != owner:
            raise DatasetError(f"--{option.replace('_', '-')} is for --format {owner}, not {format_name}")
    listing = FORMATS[format_name](lists, options)
    listing.clips, duplicates = _drop_duplicates(listing.clips)
    listing.skipped += duplicates
    return listing


def _check_labels_option(options: ImportOptions, allowed: tuple[str, ...], format_name: str) -> None:
    if options.labels is not None and options.labels not in allowed:
        known = " or ".join(allowed) if allowed else "nothing (its labels are its class names)"
        raise DatasetError(f"--labels {options.labels!r}: {format_name} takes {known}")


# --------------------------------------------------------------------------- shared parsing


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank, non-"#" row; fields stripped. The official lists
    put a space after each comma (AudioSet), which skipinitialspace reads past."""
    reader = csv.reader(io.StringIO(_read_utf8(path)), skipinitialspace=True)
    for row in reader:
        if not row or all(not cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        yield reader.line_num, [cell.strip() for cell in row]


def _seconds(text: str, column: str, path: Path, line: int | str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise DatasetError(f"{column} must be a number of seconds >= 0, got {text!r}", path=path, line=line)
    return value


_TIMESTAMP = re.compile(r"(\d+):([0-5]?\d):([0-5]?\d(?:\.\d+)?)")


def _timestamp(text: str, column: str, path: Path, line: int) -> float:
    """EPIC's HH:MM:SS.ff as seconds."""
    match = _TIMESTAMP.fullmatch(text)
    if not match:
        raise DatasetError(f"{column} must be a timestamp HH:MM:SS.ff, got {text!r}", path=path, line=line)
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _split(text: str, listed: ListFile, line: int | str) -> str | None:
    """The row's split: SPLIT=FILE's, else the split column's, else the one the file name states."""
    if listed.split is not None:
        return listed.split
    if not text:
        return listed.default_split
    if text.lower() not in SPLIT_ALIASES:
        raise DatasetError(f"unknown split {text!r} (expected train, val/validate or test)", path=listed.path, line=line)
    return SPLIT_ALIASES[text.lower()]


def _window(clip_id: str, start: float, end: float, where: str) -> Skipped | None:
    if end > start:
        return None
    return Skipped("empty_window", where, clip_id, f"ends ({end:g} s) before it starts ({start:g} s)")


def _header(row: list[str], required: tuple[str, ...], path: Path, line: int, expected: str) -> list[str]:
    header = [cell.lower() for cell in row]
    missing = [name for name in required if name not in header]
    if missing:
        raise DatasetError(
            f"missing column(s) {', '.join(missing)} in the header (expected {expected}); header is: {','.join(row)}",
            path=path, line=line,
        )  # fmt: skip
    return header


def milliseconds(seconds: float | None) -> int | None:
    """Seconds as whole milliseconds: list times and file-name times compare equal however they are
    written ("30", "30.000", "000030")."""
    return None if seconds is None else round(seconds * 1000)


def _drop_duplicates(clips: list[ListedClip]) -> tuple[list[ListedClip], list[Skipped]]:
    """The first of the rows naming the same clip (video, window) is kept; the others are reported."""
    first: dict[tuple, ListedClip] = {}
    kept, skipped = [], []
    for clip in clips:
        key = (clip.video_id, milliseconds(clip.start), milliseconds(clip.end))
        if key not in first:
            first[key] = clip
            kept.append(clip)
            continue
        original = first[key]
        differs = [
            f"{what} {theirs!r} there, {ours!r} here"
            for what, theirs, ours in (("labels", list(original.labels), list(clip.labels)), ("split", original.split, clip.split))
            if theirs != ours
        ]
        detail = f"same clip as {original.source}" + (f" ({'; '.join(differs)}); the first is kept" if differs else "")
        skipped.append(Skipped("duplicate", clip.source, clip.clip_id, detail))
    return kept, skipped


# --------------------------------------------------------------------------- AudioSet


AUDIOSET_FIELDS = "YTID, start_seconds, end_seconds, positive_labels"


def read_audioset_ontology(path: Path) -> list[tuple[str, str]]:
    """class_labels_indices.csv as (mid, display_name) in index order."""
    if not path.is_file():
        raise DatasetError("no such ontology file", path=path)
    rows = _csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise DatasetError("empty ontology file (expected index,mid,display_name)", path=path)
    _header(first[1], ("index", "mid", "display_name"), path, first[0], "index,mid,display_name")
    by_index: dict[int, tuple[str, str]] = {}
    seen: dict[str, int] = {}
    for line, row in rows:
        if len(row) != 3:
            raise DatasetError(f"expected 3 fields (index,mid,display_name), got {len(row)}", path=path, line=line)
        index_text, mid, name = row
        if not index_text.isdigit():
            raise DatasetError(f"index must be a whole number, got {index_text!r}", path=path, line=line)
        for value in (mid, name):
            if value in seen:
                raise DatasetError(f"{value!r} listed twice (first on line {seen[value]})", path=path, line=line)
            seen[value] = line
        if int(index_text) in by_index:
            raise DatasetError(f"index {index_text} listed twice", path=path, line=line)
        by_index[int(index_text)] = (mid, name)
    if sorted(by_index) != list(range(len(by_index))):
        raise DatasetError(f"indices must run 0..{len(by_index) - 1} without gaps", path=path)
    return [by_index[index] for index in range(len(by_index))]


@register("audioset")
def read_audioset(lists: list[ListFile], options: ImportOptions) -> Listing:
    """Multi-label; classes in the ontology's index order, named by display name (--labels mid:
    by MID). Without --ontology the labels are the MIDs seen, sorted."""
    _check_labels_option(options, AUDIOSET_LABELS, "audioset")
    ontology = read_audioset_ontology(options.ontology) if options.ontology else None
    mode = options.labels or ("name" if ontology else "mid")
    if mode == "name" and ontology is None:
        raise DatasetError("--labels name needs --ontology class_labels_indices.csv (the MIDs' display names)")
    label_of = {mid: (name if mode == "name" else mid) for mid, name in ontology or []}

    clips: list[ListedClip] = []
    skipped: list[Skipped] = []
    for listed in lists:
        for line, row in _csv_rows(listed.path):
            if len(row) != 4:
                raise DatasetError(f"expected 4 fields ({AUDIOSET_FIELDS}), got {len(row)}", path=listed.path, line=line)
            ytid, start_text, end_text, mids_text = row
            if not ytid:
                raise DatasetError("empty YTID", path=listed.path, line=line)
            start = _seconds(start_text, "start_seconds", listed.path, line)
            end = _seconds(end_text, "end_seconds", listed.path, line)
            mids = [mid.strip() for mid in mids_text.split(",") if mid.strip()]
            if not mids:
                raise DatasetError("no positive_labels", path=listed.path, line=line)
            if ontology is not None:
                unknown = [mid for mid in mids if mid not in label_of]
                if unknown:
                    raise DatasetError(f"unknown MID {unknown[0]!r} (not in {options.ontology})", path=listed.path, line=line)
            where = listed.where(line)
            if problem := _window(ytid, start, end, where):
                skipped.append(problem)
                continue
            labels = tuple(dict.fromkeys(label_of.get(mid, mid) for mid in mids))
            clips.append(ListedClip(ytid, start, end, labels, listed.default_split, where, ytid))
    if ontology is not None:
        classes = [label_of[mid] for mid, _ in ontology]
    else:
        classes = sorted({label for clip in clips for label in clip.labels})
    return Listing(clips, classes, multilabel=True, skipped=skipped, full_videos=options.full_videos)


# --------------------------------------------------------------------------- VGGSound


@register("vggsound")
def read_vggsound(lists: list[ListFile], options: ImportOptions) -> Listing:
    """Single-label; classes sorted by name (as the VGGSound release numbers them)."""
    _check_labels_option(options, (), "vggsound")
    clips: list[ListedClip] = []
    skipped: list[Skipped] = []
    for listed in lists:
        for line, row in _csv_rows(listed.path):
            if len(row) != 4:
                raise DatasetError(
                    f"expected 4 fields (YTID,start_seconds,label,split; no header), got {len(row)}", path=listed.path, line=line
                )
            ytid, start_text, label, split_text = row
            if not ytid:
                raise DatasetError("empty YTID", path=listed.path, line=line)
            start = _seconds(start_text, "start_seconds", listed.path, line)
            split = _split(split_text, listed, line)
            if not label:
                skipped.append(Skipped("unlabelled", listed.where(line), ytid, "no label"))
                continue
            clips.append(ListedClip(ytid, start, start + VGGSOUND_CLIP_SECONDS, (label,), split, listed.where(line), ytid))
    classes = sorted({clip.labels[0] for clip in clips})
    return Listing(clips, classes, multilabel=False, skipped=skipped, full_videos=options.full_videos)


# --------------------------------------------------------------------------- Kinetics


KINETICS_COLUMNS = "label,youtube_id,time_start,time_end,split"


@register("kinetics")
def read_kinetics(lists: list[ListFile], options: ImportOptions) -> Listing:
    """Single-label; classes sorted by name (the usual Kinetics class indices). Rows without a
    label (the test lists) are reported as unlabelled."""
    _check_labels_option(options, (), "kinetics")
    clips: list[ListedClip] = []
    skipped: list[Skipped] = []
    for listed in lists:
        is_json = listed.path.suffix.lower() == ".json"
        rows = _kinetics_json_rows(listed) if is_json else _kinetics_csv_rows(listed)
        for where, ytid, start, end, label, split in rows:
            if not label:
                skipped.append(Skipped("unlabelled", where, ytid, "no label (Kinetics test lists have none)"))
            elif problem := _window(ytid, start, end, where):
                skipped.append(problem)
            else:
                clips.append(ListedClip(ytid, start, end, (label,), split, where, ytid))
    classes = sorted({clip.labels[0] for clip in clips})
    return Listing(clips, classes, multilabel=False, skipped=skipped, full_videos=options.full_videos)


def _kinetics_csv_rows(listed: ListFile) -> Iterator[tuple]:
    rows = _csv_rows(listed.path)
    first = next(rows, None)
    if first is None:
        raise DatasetError(f"empty list (expected a header {KINETICS_COLUMNS})", path=listed.path)
    header = _header(first[1], ("youtube_id", "time_start", "time_end"), listed.path, first[0], KINETICS_COLUMNS)
    for line, row in rows:
        if len(row) != len(header):
            raise DatasetError(
                f"expected {len(header)} fields (as in the header on line {first[0]}), got {len(row)}", path=listed.path, line=line
            )
        values = dict(zip(header, row))
        if not values["youtube_id"]:
            raise DatasetError("empty youtube_id", path=listed.path, line=line)
        start = _seconds(values["time_start"], "time_start", listed.path, line)
        end = _seconds(values["time_end"], "time_end", listed.path, line)
        split = _split(values.get("split", ""), listed, line)
        yield listed.where(line), values["youtube_id"], start, end, values.get("label", ""), split


def _kinetics_json_rows(listed: ListFile) -> Iterator[tuple]:
    try:
        entries = json.loads(_read_utf8(listed.path))
    except json.JSONDecodeError as error:
        raise DatasetError(f"not valid JSON: {error.msg}", path=listed.path, line=error.lineno) from None
    if not isinstance(entries, dict):
        raise DatasetError('expected a JSON object {"<youtube id>": {"annotations": ..., "subset": ...}}', path=listed.path)
    for ytid, entry in entries.items():
        where = f"{listed.path}:{ytid!r}"
        if not isinstance(entry, dict):
            raise _entry_error(listed, ytid, "expected an object with annotations and subset")
        annotations = entry.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise _entry_error(listed, ytid, "annotations must be an object")
        label = str(annotations.get("label") or "").strip()
        segment = annotations.get("segment")
        split = _split(str(entry.get("subset") or ""), listed, repr(ytid))
        if not label and segment is None:  # a test entry may carry neither
            yield where, ytid, None, None, "", split
            continue
        if not (isinstance(segment, list) and len(segment) == 2 and all(isinstance(t, (int, float)) for t in segment)):
            raise _entry_error(listed, ytid, f"annotations.segment must be [start, end] in seconds, got {segment!r}")
        start, end = (_seconds(str(t), "segment", listed.path, repr(ytid)) for t in segment)
        yield where, ytid, start, end, label, split


def _entry_error(listed: ListFile, ytid: str, message: str) -> DatasetError:
    """JSON lists have no useful line numbers: the entry's key says where."""
    return DatasetError(f"entry {ytid!r}: {message}", path=listed.path)


# --------------------------------------------------------------------------- EPIC-Kitchens-100


EPIC_COLUMNS = "narration_id,participant_id,video_id,...,start_timestamp,stop_timestamp,...,verb,verb_class,noun,noun_class,..."


def read_epic_classes(path: Path) -> dict[int, str]:
    """EPIC_100_verb_classes.csv / EPIC_100_noun_classes.csv: class id -> key, in id order."""
    if not path.is_file():
        raise DatasetError("no such class file", path=path)
    rows = _csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise DatasetError("empty class file (expected id,key,instances,category)", path=path)
    header = _header(first[1], ("id", "key"), path, first[0], "id,key,instances,category")
    keys: dict[int, str] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise DatasetError(f"expected {len(header)} fields, got {len(row)}", path=path, line=line)
        values = dict(zip(header, row))
        if not values["id"].isdigit() or not values["key"]:
            raise DatasetError(f"expected a whole-number id and a key, got {values['id']!r}, {values['key']!r}", path=path, line=line)
        if int(values["id"]) in keys:
            raise DatasetError(f"id {values['id']} listed twice", path=path, line=line)
        keys[int(values["id"])] = values["key"]
    return dict(sorted(keys.items()))


@dataclass(frozen=True)
class _Narration:
    clip: ListedClip  # labels filled in once the class names are known
    verb: tuple[int, str]  # (class id, the row's verb text)
    noun: tuple[int, str]


@register("epic")
def read_epic(lists: list[ListFile], options: ImportOptions) -> Listing:
    """Single-label: --labels verb | noun | action ("verb noun", the pairs EPIC scores as actions).
    Verb and noun classes keep their official ids' order; actions are the pairs seen, ordered by
    (verb id, noun id). Class names are the official keys with --verb-classes/--noun-classes,
    else the rows' most common verb/noun text for the id."""
    _check_labels_option(options, EPIC_LABELS, "epic")
    mode = options.labels or "action"
    verb_keys = read_epic_classes(options.verb_classes) if options.verb_classes else None
    noun_keys = read_epic_classes(options.noun_classes) if options.noun_classes else None

    narrations: list[_Narration] = []
    skipped: list[Skipped] = []
    for listed in lists:
        rows = _csv_rows(listed.path)
        first = next(rows, None)
        if first is None:
            raise DatasetError(f"empty list (expected a header {EPIC_COLUMNS})", path=listed.path)
        required = ("narration_id", "video_id", "start_timestamp", "stop_timestamp")
        header = _header(first[1], required, listed.path, first[0], EPIC_COLUMNS)
        labelled = all(name in header for name in ("verb", "verb_class", "noun", "noun_class"))
        for line, row in rows:
            if len(row) != len(header):
                raise DatasetError(
                    f"expected {len(header)} fields (as in the header on line {first[0]}), got {len(row)}", path=listed.path, line=line
                )
            values = dict(zip(header, row))
            where, narration_id = listed.where(line), values["narration_id"]
            if not values["video_id"] or not narration_id:
                raise DatasetError("empty video_id or narration_id", path=listed.path, line=line)
            start = _timestamp(values["start_timestamp"], "start_timestamp", listed.path, line)
            end = _timestamp(values["stop_timestamp"], "stop_timestamp", listed.path, line)
            if problem := _window(narration_id, start, end, where):
                skipped.append(problem)
                continue
            if not labelled:
                skipped.append(Skipped("unlabelled", where, narration_id, "no verb/noun (EPIC test lists have none)"))
                continue
            ids = []
            for kind, keys in (("verb", verb_keys), ("noun", noun_keys)):
                text = values[f"{kind}_class"]
                if not text.isdigit():
                    raise DatasetError(f"{kind}_class must be a whole number, got {text!r}", path=listed.path, line=line)
                if keys is not None and int(text) not in keys:
                    source = options.verb_classes if kind == "verb" else options.noun_classes
                    raise DatasetError(f"{kind}_class {text} is not in {source}", path=listed.path, line=line)
                ids.append((int(text), values[kind]))
            clip = ListedClip(values["video_id"], start, end, (), listed.default_split, where, narration_id)
            narrations.append(_Narration(clip, ids[0], ids[1]))

    verb_names = verb_keys or _names_from_rows([n.verb for n in narrations])
    noun_names = noun_keys or _names_from_rows([n.noun for n in narrations])
    label_of: Callable[[_Narration], str] = {
        "verb": lambda n: verb_names[n.verb[0]],
        "noun": lambda n: noun_names[n.noun[0]],
        "action": lambda n: f"{verb_names[n.verb[0]]} {noun_names[n.noun[0]]}",
    }[mode]
    if mode == "verb":
        classes = list(verb_names.values())
    elif mode == "noun":
        classes = list(noun_names.values())
    else:
        pairs = sorted({(n.verb[0], n.noun[0]) for n in narrations})
        classes = [f"{verb_names[v]} {noun_names[o]}" for v, o in pairs]
    clips = [_with_labels(n.clip, (label_of(n),)) for n in narrations]
    return Listing(clips, classes, multilabel=False, skipped=skipped, full_videos=True)


def _names_from_rows(pairs: list[tuple[int, str]]) -> dict[int, str]:
    """Class id -> the text rows give it most often (ties: the first seen); "#id" keeps two ids
    that share a text apart. Ids in order."""
    texts: dict[int, Counter[str]] = {}
    for class_id, text in pairs:
        texts.setdefault(class_id, Counter())[text] += 1
    names = {class_id: counts.most_common(1)[0][0] for class_id, counts in sorted(texts.items())}
    shared = {name for name, count in Counter(names.values()).items() if count > 1}
    return {class_id: (f"{name}#{class_id}" if name in shared else name) for class_id, name in names.items()}


def _with_labels(clip: ListedClip, labels: tuple[str, ...]) -> ListedClip:
    return ListedClip(clip.video_id, clip.start, clip.end, labels, clip.split, clip.source, clip.clip_id)
