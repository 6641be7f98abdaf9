"""Reading manifests and class folders, and refusing malformed ones with file:line messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.records import (
    ClipRecord,
    DatasetError,
    load_records,
    read_class_folders,
    read_manifest,
)

# --------------------------------------------------------------------------- helpers


def touch(root: Path, *relative: str) -> None:
    """Create (empty) files: the readers only check existence, they never decode."""
    for name in relative:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x00")


def write_manifest(root: Path, text: str, name: str = "manifest.csv") -> Path:
    path = root / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    touch(tmp_path, "clips/a.mp4", "clips/b.wav", "clips/c.webm", "clips/d.mkv")
    return tmp_path


# --------------------------------------------------------------------------- good manifests


def test_single_label_manifest_with_splits_and_extra_columns(clips: Path) -> None:
    manifest = write_manifest(
        clips,
        "path,label,split,source\n"
        "clips/a.mp4,dog,train,youtube\n"
        "clips/b.wav,cat,validation,freesound\n"  # alias for val
        f"{clips / 'clips/c.webm'},bird,test,\n",  # absolute paths work too
    )
    dataset = read_manifest(manifest)
    assert dataset.classes == ["bird", "cat", "dog"]  # sorted without classes.txt
    assert not dataset.multilabel
    assert dataset.source == manifest
    first = dataset.records[0]
    assert first == ClipRecord(path=clips / "clips/a.mp4", labels=("dog",), split="train", extra={"source": "youtube"})
    assert first.path.is_absolute() and first.label == "dog"
    assert [r.split for r in dataset] == ["train", "val", "test"]
    assert dataset.records[2].path == clips / "clips/c.webm"
    assert dataset.class_index() == {"bird": 0, "cat": 1, "dog": 2}

    val = dataset.split("val")
    assert [r.labels for r in val] == [("cat",)]
    assert val.classes == dataset.classes  # indices do not shift in a subset
    assert len(dataset.split("validation")) == 1
    assert len(dataset.filter(lambda r: r.extra["source"] != "youtube")) == 2


def test_multi_label_semicolon_and_audioset_style_commas(clips: Path) -> None:
    manifest = write_manifest(
        clips,
        "# AudioSet-like list: comments and blank lines are skipped\n"
        "path, label, start, end\n"
        "\n"
        'clips/a.mp4, "/m/09x0r,/m/04rlf", 30.0, 40.0\n'
        "clips/b.wav, speech;music;dog , , \n",
    )
    dataset = read_manifest(manifest)
    assert dataset.multilabel
    assert dataset.records[0].labels == ("/m/09x0r", "/m/04rlf")
    assert dataset.records[1].labels == ("speech", "music", "dog")
    assert (dataset.records[0].start, dataset.records[0].end) == (30.0, 40.0)
    assert (dataset.records[1].start, dataset.records[1].end) == (None, None)
    assert dataset.classes == sorted(["/m/09x0r", "/m/04rlf", "speech", "music", "dog"])
    with pytest.raises(ValueError, match="labels"):
        _ = dataset.records[0].label
    assert "multi-label" in dataset.summary()


def test_labels_column_means_multilabel_even_with_one_label_per_clip(clips: Path) -> None:
    dataset = read_manifest(write_manifest(clips, "path,labels\nclips/a.mp4,dog\nclips/b.wav,cat\n"))
    assert dataset.multilabel
    assert [r.labels for r in dataset] == [("dog",), ("cat",)]


def test_windows_modalities_and_whitespace(clips: Path) -> None:
    dataset = read_manifest(
        write_manifest(
            clips,
            "\ufeffPath , Label , Start , End , Modalities\n"  # BOM and stray spaces from a spreadsheet
            "clips/a.mp4,dog,0,2.5,audio+video\n"
            "clips/a.mp4,dog,2.5,5,AV\n"  # the same file twice, as two windows
            "clips/b.wav,cat,1.25,,audio\n"
            "clips/c.webm,bird,,3,video\n"
            "clips/d.mkv,bird,,,\n",
        )
    )
    assert [(r.start, r.end) for r in dataset] == [(0.0, 2.5), (2.5, 5.0), (1.25, None), (None, 3.0), (None, None)]
    assert [r.modalities for r in dataset] == ["audio+video", "audio+video", "audio", "video", None]
    summary = dataset.summary()
    assert "5 clips, 3 classes" in summary
    assert "audio+video 2, audio 1, video 1, unknown 1" in summary
    assert "4 clips have start/end times" in summary


def test_classes_txt_fixes_the_class_order(clips: Path) -> None:
    (clips / "classes.txt").write_text("dog\ncat\n\nbird\nunused\n", encoding="utf-8")
    dataset = read_manifest(write_manifest(clips, "path,label\nclips/a.mp4,bird\nclips/b.wav,dog\n"))
    assert dataset.classes == ["dog", "cat", "bird", "unused"]
    assert dataset.class_index()["bird"] == 2


def test_a_label_listed_in_classes_txt_keeps_its_commas(clips: Path) -> None:
    (clips / "classes.txt").write_text("vehicle horn, car horn, honking\ncar\nhorn\n", encoding="utf-8")
    dataset = read_manifest(
        write_manifest(clips, 'path,label\nclips/a.mp4,"vehicle horn, car horn, honking"\nclips/b.wav,"car,horn"\n')
    )
    assert [record.labels for record in dataset] == [("vehicle horn, car horn, honking",), ("car", "horn")]


def test_summary_counts_clips_per_split_and_class(clips: Path) -> None:
    dataset = read_manifest(
        write_manifest(
            clips,
            "path,label,split\nclips/a.mp4,dog,train\nclips/b.wav,dog,train\nclips/c.webm,cat,test\nclips/d.mkv,cat,\n",
        )
    )
    summary = dataset.summary()
    assert "splits: train 2, test 1, (none) 1" in summary
    rows = {line.split()[0]: line.split()[1:] for line in summary.splitlines() if line.startswith(("cat ", "dog "))}
    assert rows == {"cat": ["0", "1", "1", "2"], "dog": ["2", "0", "0", "2"]}  # train, test, (none), total


def test_records_are_hashable(clips: Path) -> None:
    dataset = read_manifest(write_manifest(clips, "path,label,note\nclips/a.mp4,dog,x\nclips/a.mp4,dog,x\n"))
    assert len(set(dataset.records)) == 1


def test_captions_column_is_split_on_bars_and_stripped(clips: Path) -> None:
    manifest = write_manifest(
        clips,
        "path,label,captions,source\n"
        'clips/a.mp4,dog," a dog barks | barking in a hallway |  ",yt\n'
        "clips/b.wav,cat,a cat purrs,fs\n"
        'clips/c.webm,bird,"birds sing, loudly|",\n'  # a comma inside a quoted field is text
        "clips/d.mkv,bird,,\n",
    )
    dataset = read_manifest(manifest)
    assert [r.captions for r in dataset] == [
        ("a dog barks", "barking in a hallway"),
        ("a cat purrs",),
        ("birds sing, loudly",),
        (),
    ]
    assert all("captions" not in r.extra for r in dataset)
    assert dataset.records[0].extra == {"source": "yt"}
    assert "captions: 3 of 4 clips have captions (4 captions)" in dataset.summary()


def test_caption_column_is_accepted_too_and_not_both(clips: Path) -> None:
    dataset = read_manifest(write_manifest(clips, "path,label,Caption\nclips/a.mp4,dog,a dog barks\n"))
    assert dataset.records[0].captions == ("a dog barks",) and dataset.records[0].extra == {}
    with pytest.raises(DatasetError, match="both 'caption' and 'captions'"):
        read_manifest(write_manifest(clips, "path,label,caption,captions\nclips/a.mp4,dog,x,y\n"))


def test_without_a_captions_column_records_have_none(clips: Path) -> None:
    dataset = read_manifest(write_manifest(clips, "path,label\nclips/a.mp4,dog\n"))
    assert dataset.records[0].captions == ()
    assert "have captions" not in dataset.summary()
    folders = read_class_folders(clips)
    assert all(r.captions == () for r in folders)


# --------------------------------------------------------------------------- malformed manifests


MALFORMED = [
    # (manifest text, line named in the error, phrase in the error)
    ("path,split\nclips/a.mp4,train\n", 1, "missing required column(s): label"),
    ("label,split\ndog,train\n", 1, "missing required column(s): path"),
    ("path,label,labels\nclips/a.mp4,dog,dog\n", 1, "both 'label' and 'labels'"),
    ("path,label,label\nclips/a.mp4,dog,cat\n", 1, "duplicate column(s) in header: label"),
    ("path,label\nclips/a.mp4,dog\nclips/b.wav,\n", 3, "empty label"),
    ("path,label\nclips/a.mp4,dog;;cat\n", 2, "empty label in 'dog;;cat'"),
    ("path,label\nclips/a.mp4,dog;dog\n", 2, "label repeated"),
    ("path,label,start\nclips/a.mp4,dog,soon\n", 2, "start must be a number of seconds, got 'soon'"),
    ("path,label,start\nclips/a.mp4,dog,-1\n", 2, "start must be >= 0"),
    ("path,label,start\nclips/a.mp4,dog,nan\n", 2, "finite"),
    ("path,label,start,end\nclips/a.mp4,dog,5,5\n", 2, "end (5 s) must be after start (5 s)"),
    ("path,label,start,end\nclips/a.mp4,dog,5,2\n", 2, "must be after start"),
    ("path,label,end\nclips/a.mp4,dog,-3\n", 2, "must be after start (0 s)"),
    ("path,label\nclips/a.mp4,dog\nclips/missing.mp4,cat\n", 3, "file not found: 'clips/missing.mp4'"),
    ("path,label\n,dog\n", 2, "empty path"),
    ("path,label\nclips/a.mp4,dog,extra\n", 2, "expected 2 fields"),
    ("path,label,modalities\nclips/a.mp4,dog,smell\n", 2, "modalities must be one of"),
    ("path,label\n", None, "empty manifest: a header but no clips"),
    ("", None, "empty manifest: no header row"),
    ("# only a comment\n\n", None, "empty manifest: no header row"),
]


@pytest.mark.parametrize(("text", "line", "phrase"), MALFORMED, ids=[m[2][:40] for m in MALFORMED])
def test_malformed_manifest_names_file_and_line(clips: Path, text: str, line: int | None, phrase: str) -> None:
    manifest = write_manifest(clips, text)
    with pytest.raises(DatasetError) as caught:
        read_manifest(manifest)
    message = str(caught.value)
    assert phrase in message
    prefix = f"{manifest}:{line}: " if line is not None else f"{manifest}: "
    assert message.startswith(prefix), message
    assert caught.value.line == line and caught.value.path == manifest


def test_non_utf8_manifest_names_the_line(clips: Path) -> None:
    manifest = clips / "manifest.csv"
    manifest.write_bytes("path,label\nclips/a.mp4,dog\nclips/b.wav,café\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"manifest\.csv:3: not UTF-8 \(byte 0xe9"):
        read_manifest(manifest)


def test_label_missing_from_classes_txt(clips: Path) -> None:
    (clips / "classes.txt").write_text("dog\ncat\n", encoding="utf-8")
    manifest = write_manifest(clips, "path,label\nclips/a.mp4,dog\nclips/b.wav,dog;bird\n")
    with pytest.raises(DatasetError, match=r"manifest\.csv:3: label 'bird' is not listed in .*classes\.txt"):
        read_manifest(manifest)


def test_duplicate_class_in_classes_txt(clips: Path) -> None:
    (clips / "classes.txt").write_text("dog\ncat\ndog\n", encoding="utf-8")
    manifest = write_manifest(clips, "path,label\nclips/a.mp4,dog\n")
    with pytest.raises(DatasetError, match=r"classes\.txt:3: class 'dog' listed twice \(first on line 1\)"):
        read_manifest(manifest)


def test_missing_sources(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file or directory"):
        load_records(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no such manifest file"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(DatasetError, match="not a directory"):
        read_class_folders(tmp_path / "nope")


# --------------------------------------------------------------------------- class folders


def test_class_folders_without_splits(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "dog/1.mp4", "dog/2.WAV", "dog/nested/3.mkv",  # extensions are case-insensitive; subfolders count
        "cat/1.webm",
        "cat/.hidden.mp4", "cat/notes.txt", "cat/.cache/4.mp4",  # hidden and non-media: ignored
        ".git/objects/x.mp4",  # hidden folder at the top: not a class
    )  # fmt: skip
    dataset = read_class_folders(tmp_path)
    assert dataset.classes == ["cat", "dog"]
    assert not dataset.multilabel
    assert [(r.path.relative_to(tmp_path).as_posix(), r.labels, r.split) for r in dataset] == [
        ("cat/1.webm", ("cat",), None),
        ("dog/1.mp4", ("dog",), None),
        ("dog/2.WAV", ("dog",), None),
        ("dog/nested/3.mkv", ("dog",), None),
    ]
    assert "4 clips, 2 classes" in dataset.summary()


def test_class_folders_with_split_folders(tmp_path: Path) -> None:
    touch(tmp_path, "train/dog/1.mp4", "train/dog/2.mp4", "train/cat/1.mp4", "validation/dog/3.mp4", "test/cat/2.ogg")
    dataset = read_class_folders(tmp_path)
    assert dataset.classes == ["cat", "dog"]
    assert [(r.split, r.label) for r in dataset.split("train")] == [("train", "cat"), ("train", "dog"), ("train", "dog")]
    assert [r.label for r in dataset.split("val")] == ["dog"]
    assert [r.label for r in dataset.split("test")] == ["cat"]
    assert "splits: train 3, val 1, test 1" in dataset.summary()


def test_a_class_named_like_a_split_is_still_a_class(tmp_path: Path) -> None:
    touch(tmp_path, "test/1.mp4", "dog/1.mp4")  # not every folder is a split name
    dataset = read_class_folders(tmp_path)
    assert dataset.classes == ["dog", "test"]
    assert {r.split for r in dataset} == {None}


def test_class_folders_respect_classes_txt(tmp_path: Path) -> None:
    touch(tmp_path, "dog/1.mp4", "cat/1.mp4")
    (tmp_path / "classes.txt").write_text("dog\ncat\n", encoding="utf-8")
    assert read_class_folders(tmp_path).classes == ["dog", "cat"]
    touch(tmp_path, "bird/1.mp4")
    with pytest.raises(DatasetError, match=r"bird: class folder 'bird' is not listed"):
        read_class_folders(tmp_path)


def test_class_folder_errors(tmp_path: Path) -> None:
    touch(tmp_path, "loose.mp4")
    with pytest.raises(DatasetError, match="no class folders"):
        read_class_folders(tmp_path)
    touch(tmp_path, "dog/readme.txt", "dog/.hidden.mp4")
    with pytest.raises(DatasetError, match=r"dog: class folder has no media files"):
        read_class_folders(tmp_path)
    split_root = tmp_path / "splits"
    (split_root / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"train: no class folders"):
        read_class_folders(split_root)


# --------------------------------------------------------------------------- load_records


def test_load_records_dispatches_on_what_it_is_given(clips: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    manifest = write_manifest(clips, "path,label\nclips/a.mp4,dog\n")
    other = write_manifest(clips, "path,label\nclips/b.wav,cat\n", name="other.csv")
    assert load_records(manifest).source == manifest
    assert load_records(clips).source == manifest  # a directory with manifest.csv
    assert [r.label for r in load_records(other)] == ["cat"]  # any CSV file by path

    folders = tmp_path_factory.mktemp("folders")
    touch(folders, "dog/1.mp4")
    from_folders = load_records(folders)
    assert from_folders.source == folders and from_folders.classes == ["dog"]
