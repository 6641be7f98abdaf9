"""`avserve data import`: official AudioSet, VGGSound, Kinetics and EPIC-Kitchens-100 lists plus a
folder of real (tiny) clips become a manifest `avserve data info` reads; missing, unreadable and
ambiguous clips land in the report, and malformed list rows are errors naming file:line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avserve.cli import build_app
from avserve.media.workers import CRASH_SUFFIX_VARIABLE
from avserve.media.synthetic import AudioTrack, VideoTrack, write_clip
from training.data.importers import ImportOptions, ListFile, read_lists
from training.data.records import DatasetError, load_records

# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real file per kind (1 s each), copied under the names each test needs."""
    root = tmp_path_factory.mktemp("media")
    video = VideoTrack(width=32, height=32, fps=10, num_frames=10)
    audio = AudioTrack(sample_rate=16000, layout="mono", seconds=1.0)
    return {
        "av": write_clip(root / "av.mp4", video=video, audio=audio),
        "audio": write_clip(root / "audio.wav", audio=AudioTrack(codec="pcm_s16le", sample_rate=16000, layout="mono")),
        "video": write_clip(root / "video.mp4", video=video),
    }


def place(clips: Path, media: dict[str, Path], files: dict[str, str]) -> None:
    """files: relative name -> media kind, or "garbage" for bytes no demuxer reads."""
    for name, kind in files.items():
        target = clips / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == "garbage":
            target.write_bytes(b"this is not a video file at all\x00\x01\x02" * 20)
        else:
            shutil.copyfile(media[kind], target)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def run(*args: str) -> str:
    result = CliRunner().invoke(build_app(), ["data", *args])
    assert result.exit_code == 0, result.output
    return result.output


def fails(*args: str) -> str:
    result = CliRunner().invoke(build_app(), ["data", *args])
    assert result.exit_code == 2, result.output
    return result.output


def manifest_rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        return {row["clip_id"]: row for row in csv.DictReader(handle)}


def report(out: Path) -> set[tuple[str, str]]:
    with (out / "import_report.csv").open(newline="", encoding="utf-8") as handle:
        return {(row["problem"], row["clip_id"]) for row in csv.DictReader(handle)}


def classes(out: Path) -> list[str]:
    return (out / "classes.txt").read_text(encoding="utf-8").splitlines()


# --------------------------------------------------------------------------- AudioSet

ONTOLOGY = """index,mid,display_name
0,/m/09x0r,"Speech"
1,/m/05zppz,"Male speech, man speaking"
2,/m/0jbk,"Animal"
3,/m/0bt9lr,"Dog"
"""
AUDIOSET_HEADER = """# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=5, num_segs=5, num_unique_labels=4, num_positive_labels=7
# YTID, start_seconds, end_seconds, positive_labels
"""


def audioset_lists(root: Path) -> tuple[Path, Path, Path]:
    train = write(root / "balanced_train_segments.csv", AUDIOSET_HEADER + (
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/05zppz"\n'
        '-0SdAVK79lg, 0.000, 10.000, "/m/0jbk,/m/0bt9lr"\n'
        'a_b-c_d0123, 15.000, 25.000, "/m/0bt9lr"\n'
        'missingclip, 5.000, 15.000, "/m/09x0r"\n'
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/05zppz"\n'
    ))  # fmt: skip
    evaluation = write(root / "eval_segments.csv", AUDIOSET_HEADER + (
        'Yx7rWm0LzZQ, 60.000, 70.000, "/m/05zppz"\n'
        'brokenclip0, 0.000, 10.000, "/m/0jbk"\n'
    ))  # fmt: skip
    return train, evaluation, write(root / "class_labels_indices.csv", ONTOLOGY)


def test_audioset(tmp_path: Path, media: dict[str, Path]) -> None:
    train, evaluation, ontology = audioset_lists(tmp_path)
    clips, out = tmp_path / "clips", tmp_path / "audioset"
    place(clips, media, {
        "--PJHxphWEs_30.mp4": "av",  # <id>_<start>; the id starts with "-"
        "Y-0SdAVK79lg.wav": "audio",  # AudioSet's Y prefix
        "a_b-c_d0123_15.000_25.000.wav": "audio",  # underscores in the id: the numeric tail is the window
        "a_b-c_d0123.wav": "garbage",  # a less specific name for the same id: not used
        "YYx7rWm0LzZQ.wav": "audio",  # Y prefix on an id that itself starts with Y
        "brokenclip0_0.mp4": "garbage",
    })  # fmt: skip
    output = run("import", "--format", "audioset", "--list", str(train), "--list", str(evaluation),
                 "--ontology", str(ontology), "--clips", str(clips), "--out", str(out), "--workers", "2")  # fmt: skip

    assert classes(out) == ["Speech", "Male speech, man speaking", "Animal", "Dog"]  # the ontology's index order
    rows = manifest_rows(out)
    assert {clip_id: (row["path"], row["labels"], row["split"], row["start"], row["end"], row["modalities"]) for clip_id, row in rows.items()} == {
        "--PJHxphWEs": (str(clips / "--PJHxphWEs_30.mp4"), "Speech;Male speech, man speaking", "train", "", "", "audio+video"),
        "-0SdAVK79lg": (str(clips / "Y-0SdAVK79lg.wav"), "Animal;Dog", "train", "", "", "audio"),
        "a_b-c_d0123": (str(clips / "a_b-c_d0123_15.000_25.000.wav"), "Dog", "train", "", "", "audio"),
        "Yx7rWm0LzZQ": (str(clips / "YYx7rWm0LzZQ.wav"), "Male speech, man speaking", "test", "", "", "audio"),
    }  # fmt: skip
    assert report(out) == {("missing", "missingclip"), ("duplicate", "--PJHxphWEs"), ("unreadable", "brokenclip0")}
    assert "7 listed, 4 clips written" in output and "missing: 1" in output and "unreadable: 1" in output
    assert f"{train}:7: missingclip" in output  # the list line of the missing clip

    info = run("info", str(out))
    assert "4 clips, 4 classes, multi-label" in info and "splits: train 3, test 1" in info
    dataset = load_records(out)
    assert dataset.records[3].labels == ("Male speech, man speaking",)  # one label, comma and all


def test_audioset_mids_without_the_ontology(tmp_path: Path) -> None:
    train, _, _ = audioset_lists(tmp_path)
    listing = read_lists("audioset", [ListFile.parse(str(train))], ImportOptions())
    assert listing.classes == ["/m/05zppz", "/m/09x0r", "/m/0bt9lr", "/m/0jbk"]
    assert listing.clips[0].labels == ("/m/09x0r", "/m/05zppz") and listing.clips[0].split == "train"
    assert (listing.clips[0].start, listing.clips[0].end) == (30.0, 40.0)


# --------------------------------------------------------------------------- VGGSound


def test_vggsound(tmp_path: Path, media: dict[str, Path]) -> None:
    listed = write(tmp_path / "vggsound.csv", (
        "---g-f_I2yQ,1,people marching,test\n"
        "--0PQM4-hqg,30,waterfall burbling,train\n"
        '--5OkAjCI7g,40,"vehicle horn, car horn, honking",train\n'
        "--8puiAGLhs,30,playing tennis,train\n"  # not downloaded
        "--0PQM4-hqg,30,waterfall burbling,train\n"  # listed twice
        "twosegments,0,playing tennis,train\n"  # two segments, one file named by the id alone
        "twosegments,20,playing tennis,train\n"
        "brokenclip0,10,waterfall burbling,test\n"
    ))  # fmt: skip
    clips, out = tmp_path / "clips", tmp_path / "vggsound"
    place(clips, media, {
        "---g-f_I2yQ_000001.mp4": "av",
        "--0PQM4-hqg_30_40.mp4": "video",
        "--5OkAjCI7g_000040.mp4": "av",
        "again/--5OkAjCI7g_000040.mp4": "av",  # the same clip twice: the first is used, the report says so
        "twosegments.mp4": "av",
        "brokenclip0_000010.mp4": "garbage",
    })  # fmt: skip
    output = run("import", "--format", "vggsound", "--list", str(listed), "--clips", str(clips), "--out", str(out), "--workers", "2")

    assert classes(out) == ["people marching", "playing tennis", "vehicle horn, car horn, honking", "waterfall burbling"]
    rows = manifest_rows(out)
    assert {clip_id: (row["path"], row["label"], row["split"], row["start"], row["end"], row["modalities"]) for clip_id, row in rows.items()} == {
        "---g-f_I2yQ": (str(clips / "---g-f_I2yQ_000001.mp4"), "people marching", "test", "", "", "audio+video"),
        "--0PQM4-hqg": (str(clips / "--0PQM4-hqg_30_40.mp4"), "waterfall burbling", "train", "", "", "video"),
        "--5OkAjCI7g": (str(clips / "--5OkAjCI7g_000040.mp4"), "vehicle horn, car horn, honking", "train", "", "", "audio+video"),
    }  # fmt: skip
    assert report(out) == {
        ("missing", "--8puiAGLhs"), ("duplicate", "--0PQM4-hqg"), ("ambiguous_files", "--5OkAjCI7g"),
        ("shared_file", "twosegments"), ("unreadable", "brokenclip0"),
    }  # fmt: skip
    assert "shared_file: 2" in output and "ambiguous_files: 1 (kept in the manifest)" in output

    info = run("info", str(out))
    assert "3 clips, 4 classes, single-label" in info and "splits: train 2, test 1" in info
    assert load_records(out).records[2].labels == ("vehicle horn, car horn, honking",)


# --------------------------------------------------------------------------- Kinetics


def test_kinetics_csv_and_json(tmp_path: Path, media: dict[str, Path]) -> None:
    train = write(tmp_path / "train.csv", (
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        "abseiling,0347ZoDXyP0,95,105,train,0\n"
        "air drumming,-eGnPDG5Pxs,0,10,train,1\n"
        "abseiling,missing0000,10,20,train,0\n"
    ))  # fmt: skip
    test = write(tmp_path / "test.csv", "youtube_id,time_start,time_end,split\n0DuoIsPOXJ0,5,15,test\n")
    validate = write(tmp_path / "validate.json", json.dumps({
        "x0P5CwN2Ok8": {"annotations": {"label": "air drumming", "segment": [0.0, 0.5]}, "subset": "validate", "duration": 10.0, "url": "https://www.youtube.com/watch?v=x0P5CwN2Ok8"},
        "longvideo00": {"annotations": {"label": "abseiling", "segment": [100.0, 110.0]}, "subset": "validate", "duration": 10.0, "url": ""},
        "brokenclip0": {"annotations": {"label": "abseiling", "segment": [0.0, 10.0]}, "subset": "validate", "duration": 10.0, "url": ""},
        "testentry00": {"annotations": {}, "subset": "test", "duration": 10.0, "url": ""},
    }))  # fmt: skip
    clips, out = tmp_path / "clips", tmp_path / "kinetics"
    place(clips, media, {
        "abseiling/0347ZoDXyP0_000095_000105.mp4": "av",  # per-class folders
        "-eGnPDG5Pxs_000000_000010.mp4": "video",  # or flat
        "x0P5CwN2Ok8.mp4": "av",  # a whole video (--full-videos): the window goes into the manifest
        "longvideo00.mp4": "av",  # 1 s long, the window is at 100 s
        "brokenclip0.mkv": "garbage",
        "0DuoIsPOXJ0_000005_000015.mp4": "av",
    })  # fmt: skip
    output = run("import", "--format", "kinetics", "--list", str(train), "--list", str(test), "--list", str(validate),
                 "--clips", str(clips), "--out", str(out), "--full-videos", "--workers", "2")  # fmt: skip

    assert classes(out) == ["abseiling", "air drumming"]
    rows = manifest_rows(out)
    assert {clip_id: (row["path"], row["label"], row["split"], row["start"], row["end"]) for clip_id, row in rows.items()} == {
        "0347ZoDXyP0": (str(clips / "abseiling/0347ZoDXyP0_000095_000105.mp4"), "abseiling", "train", "", ""),
        "-eGnPDG5Pxs": (str(clips / "-eGnPDG5Pxs_000000_000010.mp4"), "air drumming", "train", "", ""),
        "x0P5CwN2Ok8": (str(clips / "x0P5CwN2Ok8.mp4"), "air drumming", "val", "0", "0.5"),
    }  # fmt: skip
    assert report(out) == {
        ("missing", "missing0000"), ("unlabelled", "0DuoIsPOXJ0"), ("unlabelled", "testentry00"), ("window_past_end", "longvideo00"),
        ("unreadable", "brokenclip0"),
    }  # fmt: skip
    assert "window_past_end: 1" in output

    info = run("info", str(out))
    assert "3 clips, 2 classes, single-label" in info and "splits: train 2, val 1" in info
    assert "windows: 1 clips have start/end times" in info


# --------------------------------------------------------------------------- EPIC-Kitchens-100

EPIC_HEADER = (
    "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,stop_frame,"
    "narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n"
)
VERB_CLASSES = "id,key,instances,category\n0,take,\"['take', 'grab', 'pick-up']\",retrieve\n1,put,\"['put', 'place']\",leave\n3,open,\"['open']\",access\n"
NOUN_CLASSES = "id,key,instances,category\n2,plate,\"['plate']\",crockery\n3,door,\"['door']\",furniture\n"


def epic_lists(root: Path) -> tuple[Path, Path]:
    train = write(root / "EPIC_100_train.csv", EPIC_HEADER + (
        "P01_01_0,P01,P01_01,00:00:01.089,00:00:00.14,00:00:00.37,8,22,open door,open,3,door,3,['door'],[3]\n"
        "P01_01_1,P01,P01_01,00:00:00.500,00:00:00.50,00:00:00.95,30,57,take plate from door,take,0,plate,2,\"['plate', 'door']\",\"[2, 3]\"\n"
        "P01_01_2,P01,P01_01,00:00:05.000,00:00:05.00,00:00:07.50,300,450,open door,open,3,door,3,['door'],[3]\n"
        "P02_03_0,P02,P02_03,00:00:01.000,00:00:01.00,00:00:02.00,60,120,take plate,take,0,plate,2,['plate'],[2]\n"
        "P03_01_0,P03,P03_01,00:00:00.000,00:00:00.00,00:00:00.50,1,30,take plate,take,0,plate,2,['plate'],[2]\n"
    ))  # fmt: skip
    validation = write(root / "EPIC_100_validation.csv", EPIC_HEADER + (
        "P01_11_0,P01,P01_11,00:00:00.560,00:00:00.00,00:00:00.89,1,53,pick-up plate,pick-up,0,plate,2,['plate'],[2]\n"
        "P01_11_1,P01,P01_11,00:00:00.600,00:00:00.60,00:00:00.60,36,36,open door,open,3,door,3,['door'],[3]\n"
    ))  # fmt: skip
    return train, validation


def test_epic_kitchens(tmp_path: Path, media: dict[str, Path]) -> None:
    train, validation = epic_lists(tmp_path)
    verbs = write(tmp_path / "EPIC_100_verb_classes.csv", VERB_CLASSES)
    nouns = write(tmp_path / "EPIC_100_noun_classes.csv", NOUN_CLASSES)
    out = tmp_path / "epic"
    clips = out / "EPIC-KITCHENS"  # inside the output: the manifest's paths are relative, the dataset moves as one
    place(clips, media, {"P01/videos/P01_01.MP4": "av", "P01_11.MP4": "av", "P03/videos/P03_01.MP4": "garbage"})
    output = run("import", "--format", "epic", "--list", str(train), "--list", str(validation), "--verb-classes", str(verbs),
                 "--noun-classes", str(nouns), "--clips", str(clips), "--out", str(out), "--workers", "2")  # fmt: skip

    assert classes(out) == ["take plate", "open door"]  # actions: the pairs seen, by (verb id, noun id)
    rows = manifest_rows(out)
    assert {clip_id: (row["path"], row["label"], row["split"], row["start"], row["end"]) for clip_id, row in rows.items()} == {
        "P01_01_0": ("EPIC-KITCHENS/P01/videos/P01_01.MP4", "open door", "train", "0.14", "0.37"),
        "P01_01_1": ("EPIC-KITCHENS/P01/videos/P01_01.MP4", "take plate", "train", "0.5", "0.95"),
        "P01_11_0": ("EPIC-KITCHENS/P01_11.MP4", "take plate", "val", "0", "0.89"),  # "pick-up" is of class take
    }  # fmt: skip
    assert report(out) == {
        ("window_past_end", "P01_01_2"), ("missing", "P02_03_0"), ("unreadable", "P03_01_0"), ("empty_window", "P01_11_1"),
    }  # fmt: skip
    assert "7 listed, 3 clips written" in output

    info = run("info", str(out))
    assert "3 clips, 2 classes, single-label" in info and "splits: train 2, val 1" in info

    # Verbs keep the official ids' order, every class listed; nouns without the class file are named by the rows.
    verb_out, noun_out = tmp_path / "epic_verbs", tmp_path / "epic_nouns"
    run("import", "--format", "epic", "--labels", "verb", "--list", str(train), "--list", str(validation), "--verb-classes",
        str(verbs), "--clips", str(clips), "--out", str(verb_out), "--no-probe")  # fmt: skip
    assert classes(verb_out) == ["take", "put", "open"]
    verb_rows = manifest_rows(verb_out)
    assert [row["label"] for row in verb_rows.values()] == ["open", "take", "open", "take", "take"]
    assert verb_rows["P01_01_0"]["path"] == str(clips / "P01/videos/P01_01.MP4")  # outside the output: absolute
    run("import", "--format", "epic", "--labels", "noun", "--list", str(train), "--clips", str(clips), "--out", str(noun_out), "--no-probe")
    assert classes(noun_out) == ["plate", "door"]
    assert "5 clips, 3 classes" in run("info", str(verb_out))


def test_a_file_that_crashes_the_decoder_is_reported_alone(
    tmp_path: Path, media: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files are probed several per worker call; a crash fails the whole call, so each file of
    the batch is probed again on its own and only the culprit is reported."""
    monkeypatch.setenv(CRASH_SUFFIX_VARIABLE, "clip0000002.mp4")  # read when the probing workers start
    listed = write(tmp_path / "vggsound.csv", "".join(f"clip{n:07d},0,dog barking,train\n" for n in range(4)))
    clips, out = tmp_path / "clips", tmp_path / "out"
    place(clips, media, {f"clip{n:07d}.mp4": "av" for n in range(4)})
    output = run("import", "--format", "vggsound", "--list", str(listed), "--clips", str(clips), "--out", str(out), "--workers", "1")
    assert sorted(manifest_rows(out)) == ["clip0000000", "clip0000001", "clip0000003"]
    with (out / "import_report.csv").open(newline="", encoding="utf-8") as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["problem"], row["clip_id"]) == ("unreadable", "clip0000002") and row["detail"].startswith("decoder_crashed")
    assert "unreadable: 1" in output


# --------------------------------------------------------------------------- malformed lists


@pytest.mark.parametrize(
    ("format_name", "name", "text", "line", "message"),
    [
        ("audioset", "eval_segments.csv", AUDIOSET_HEADER + '--PJHxphWEs, 30.000, 40.000, "/m/09x0r"\nabc, 1.0, "/m/09x0r"\n', 5, "expected 4 fields"),
        ("audioset", "eval_segments.csv", AUDIOSET_HEADER + 'abc, thirty, 40.000, "/m/09x0r"\n', 4, "start_seconds must be a number"),
        ("audioset", "eval_segments.csv", AUDIOSET_HEADER + 'abc, 30.000, 40.000, "/m/09x0r,/m/nope"\n', 4, "unknown MID '/m/nope'"),
        ("vggsound", "vggsound.csv", "abc,1,dog barking,train\nabc,1,dog barking\n", 2, "expected 4 fields"),
        ("vggsound", "vggsound.csv", "abc,1,dog barking,holdout\n", 1, "unknown split 'holdout'"),
        ("kinetics", "train.csv", "label,youtube_id,time_start,time_end,split\nabseiling,abc,10,-5,train\n", 2, "time_end must be a number of seconds >= 0"),
        ("kinetics", "train.csv", "label,youtube,time_start,time_end\n", 1, "missing column(s) youtube_id"),
        ("epic", "EPIC_100_train.csv", EPIC_HEADER + "P01_01_0,P01,P01_01,00:00:01.089,0.14,00:00:03.37,8,202,open door,open,3,door,3,['door'],[3]\n", 2, "start_timestamp must be a timestamp HH:MM:SS.ff, got '0.14'"),
        ("epic", "EPIC_100_train.csv", EPIC_HEADER + "P01_01_0,P01,P01_01,00:00:01.089,00:00:00.14,00:00:03.37,8,202,open door,open,3,door\n", 2, "expected 15 fields"),
    ],
)  # fmt: skip
def test_malformed_rows_are_errors_naming_file_and_line(
    tmp_path: Path, format_name: str, name: str, text: str, line: int, message: str
) -> None:
    listed = write(tmp_path / name, text)
    (tmp_path / "clips").mkdir()
    ontology = ["--ontology", str(write(tmp_path / "class_labels_indices.csv", ONTOLOGY))] if format_name == "audioset" else []
    output = fails("import", "--format", format_name, "--list", str(listed), *ontology, "--clips", str(tmp_path / "clips"),
                   "--out", str(tmp_path / "out"), "--no-probe")  # fmt: skip
    assert f"{listed}:{line}: {message}" in " ".join(output.split())
    assert "Traceback" not in output and not (tmp_path / "out" / "manifest.csv").exists()


def test_kinetics_json_errors_name_the_entry(tmp_path: Path) -> None:
    listed = write(tmp_path / "train.json", json.dumps({"abc": {"annotations": {"label": "x", "segment": [1]}, "subset": "train"}}))
    with pytest.raises(DatasetError, match=r"train\.json: entry 'abc': annotations\.segment must be \[start, end\]"):
        read_lists("kinetics", [ListFile.parse(str(listed))], ImportOptions())


def test_list_splits_and_options(tmp_path: Path) -> None:
    assert ListFile.parse("val=/data/a.csv") == ListFile(Path("/data/a.csv"), "val")
    assert ListFile.parse("/data/unbalanced_train_segments.csv").default_split == "train"
    assert ListFile.parse("/data/EPIC_100_validation.csv").default_split == "val"
    assert ListFile.parse("/data/vggsound.csv").default_split is None
    listed = write(tmp_path / "vggsound_train.csv", "abc,1,dog barking,test\nabd,1,dog barking,\n")
    # SPLIT=FILE wins over the split column, which wins over the file's name
    assert [c.split for c in read_lists("vggsound", [ListFile.parse(f"val={listed}")], ImportOptions()).clips] == ["val", "val"]
    assert [c.split for c in read_lists("vggsound", [ListFile.parse(str(listed))], ImportOptions()).clips] == ["test", "train"]
    with pytest.raises(DatasetError, match="--ontology is for --format audioset, not vggsound"):
        read_lists("vggsound", [ListFile.parse(str(listed))], ImportOptions(ontology=listed))
    with pytest.raises(DatasetError, match="--labels 'verb': vggsound takes nothing"):
        read_lists("vggsound", [ListFile.parse(str(listed))], ImportOptions(labels="verb"))
    with pytest.raises(DatasetError, match="no such list file"):
        read_lists("vggsound", [ListFile.parse(str(tmp_path / "nope.csv"))], ImportOptions())
    assert "--format 'ucf101': expected one of audioset, vggsound, kinetics, epic" in " ".join(
        fails("import", "--format", "ucf101", "--list", str(listed), "--clips", str(tmp_path), "--out", str(tmp_path / "o")).split()
    )
