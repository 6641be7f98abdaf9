"""The synthetic generator writes real, deterministic, balanced files whose factors are really there.

Media are opened with PyAV directly (not avserve.media) so these tests check the files, not
our decoder; one test at the end goes through avserve.media at model resolution.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from scipy import ndimage

from training.data import synth
from training.data.records import read_manifest
from training.data.synth import (
    ACCURACY_CEILINGS,
    AUDIO_FACTORS,
    CLASS_NAMES,
    MANIFEST_COLUMNS,
    VIDEO_FACTORS,
    SynthConfig,
    accuracy_ceiling,
    generate_dataset,
    plan_dataset,
    render_video,
)

# --------------------------------------------------------------------------- decoding helpers


def decode_audio_16k_mono(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        chunks = []
        for frame in container.decode(audio=0):
            chunks += [out.to_ndarray()[0] for out in resampler.resample(frame)]
        chunks += [out.to_ndarray()[0] for out in resampler.resample(None)]
    return np.concatenate(chunks)


def decode_video_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def classify_sound(samples: np.ndarray, sample_rate: int = 16000) -> str:
    """Name the audio factor from signal properties alone (thresholds have wide margins).

    Noise bursts spread energy over the spectrum (low peakiness); a chirp's dominant
    frequency spans octaves; the tones sit at a steady frequency, ~260 Hz or ~1.9 kHz.
    """
    n_fft, hop = 512, 256
    frames = np.lib.stride_tricks.sliding_window_view(samples, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    energy = power.sum(axis=1)
    active = energy > 0.1 * energy.max()  # skip the silence before onset and between bursts
    peak_bins = power.argmax(axis=1)
    near_peak = np.array([p[max(0, b - 8) : b + 9].sum() for p, b in zip(power, peak_bins)])
    peakiness = float(np.median(near_peak[active] / energy[active]))  # measured: bursts <0.2, others >0.85
    dominant = peak_bins[active] * sample_rate / n_fft
    low, median, high = np.percentile(dominant, [10, 50, 90])
    if peakiness < 0.5:
        return "bursts"
    if high / max(low, 1.0) > 2.0:  # measured: chirps >4, tones ~1
        return "chirp"
    if 180 < median < 400:
        return "lowtone"
    if 1500 < median < 2400:
        return "hightone"
    return f"unknown (peakiness {peakiness:.2f}, dominant {low:.0f}/{median:.0f}/{high:.0f} Hz)"


def find_shape(rgb: np.ndarray) -> tuple[str, float]:
    """(dominant colour, compactness) of the largest saturated blob in a frame.

    Compactness = area / area of the circle through its farthest pixel: 1 for a disc, 2/pi
    for a square and 0.41 for an equilateral triangle, whatever the rotation.
    """
    pixels = rgb.astype(np.int16)
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) > 90  # the background is near grey
    labels, count = ndimage.label(saturated)
    assert count > 0, "no saturated shape in the frame"
    sizes = ndimage.sum(saturated, labels, range(1, count + 1))
    blob = labels == 1 + int(np.argmax(sizes))
    colour = ("red", "green", "blue")[int(np.argmax(pixels[blob].mean(axis=0)))]
    ys, xs = np.nonzero(blob)
    reach = np.hypot(ys - ys.mean(), xs - xs.mean()).max() + 0.5
    return colour, float(blob.sum() / (np.pi * reach**2))


def classify_shape(compactness: float) -> str:
    # Measured medians over 240 clips: disc 0.76-0.93, square 0.60-0.69, triangle 0.41-0.49.
    if compactness > 0.725:
        return "disc"
    if compactness > 0.545:
        return "square"
    return "triangle"


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# --------------------------------------------------------------------------- labels and ceilings


def test_classes_are_every_audio_factor_with_every_video_factor() -> None:
    assert len(AUDIO_FACTORS) == 4 and len(VIDEO_FACTORS) == 3
    assert len(CLASS_NAMES) == len(set(CLASS_NAMES)) == 12
    assert CLASS_NAMES[0] == f"{AUDIO_FACTORS[0]}+{VIDEO_FACTORS[0]}"
    assert {synth.split_class_name(name) for name in CLASS_NAMES} == {(a, v) for a in AUDIO_FACTORS for v in VIDEO_FACTORS}
    assert "hightone+red_disc" in CLASS_NAMES


def test_accuracy_ceilings_follow_from_the_unseen_factor() -> None:
    assert ACCURACY_CEILINGS["audio"] == pytest.approx(1 / 3)
    assert ACCURACY_CEILINGS["video"] == pytest.approx(1 / 4)
    assert ACCURACY_CEILINGS["audio+video"] == 1.0
    assert accuracy_ceiling("audio", top_k=3) == 1.0  # three guesses cover every shape
    assert accuracy_ceiling("video", top_k=2) == pytest.approx(0.5)
    assert synth.CHANCE_ACCURACY == pytest.approx(1 / 12)
    with pytest.raises(ValueError, match="modalities"):
        accuracy_ceiling("text")


def test_factor_scores_tell_a_perfect_unimodal_route_from_a_lucky_one() -> None:
    from training.metrics import factor_scores

    classes = list(CLASS_NAMES)
    sounds, shapes = synth.class_factors(classes, "audio"), synth.class_factors(classes, "video")
    assert sounds[:3] == ["lowtone"] * 3 and shapes[:3] == list(VIDEO_FACTORS)
    target = np.arange(len(classes))
    # An ideal audio-only route: equal logits on the three classes with the clip's sound.
    sound = np.array([c.split("+")[0] for c in classes])
    ideal = np.where(sound[None, :] == sound[target][:, None], 5.0, -5.0)
    scores = factor_scores(ideal, target, sounds)
    assert scores["accuracy"] == 1.0 and scores["mass"] > 0.99
    # Right class every time is also right sound and right shape; one-hot targets work the same.
    perfect = np.eye(len(classes)) * 10
    assert factor_scores(perfect, np.eye(len(classes)), shapes)["accuracy"] == 1.0
    # A route that always answers class 0 gets the sound right only for the first sound's clips.
    constant = np.zeros((len(classes), len(classes)))
    constant[:, 0] = 10.0
    assert factor_scores(constant, target, sounds)["accuracy"] == pytest.approx(3 / 12)


def test_config_rejects_impossible_values() -> None:
    with pytest.raises(ValueError, match="clip_seconds"):
        SynthConfig(clip_seconds=0)
    with pytest.raises(ValueError, match="unimodal_fraction"):
        SynthConfig(unimodal_fraction=1.5)
    with pytest.raises(ValueError, match="frame_sizes"):
        SynthConfig(frame_sizes=((95, 72),))  # H.264 4:2:0 needs even sizes
    with pytest.raises(ValueError, match="split_fractions"):
        SynthConfig(split_fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="caption_fraction"):
        SynthConfig(caption_fraction=-0.1)


# --------------------------------------------------------------------------- planning (no encoding)


def test_plan_balances_classes_and_stratifies_splits_exactly() -> None:
    plans = plan_dataset(240, seed=3)
    audio_video = [p for p in plans if p.modalities == "audio+video"]
    assert Counter(p.label for p in audio_video) == {name: 20 for name in CLASS_NAMES}
    # 70/15/15 of 20 clips per class is exactly 14/3/3 for every class.
    for name in CLASS_NAMES:
        splits = Counter(p.split for p in audio_video if p.label == name)
        assert splits == {"train": 14, "val": 3, "test": 3}, name
    # Every class gets every container/codec recipe equally often: the format predicts nothing.
    for name in CLASS_NAMES:
        recipes = Counter(p.recipe for p in audio_video if p.label == name)
        assert set(recipes) == set(synth.AV_RECIPES) and set(recipes.values()) == {4}, name
    # 10 % extra of each unimodal kind, balanced over classes.
    for kind in ("audio", "video"):
        unimodal = [p for p in plans if p.modalities == kind]
        assert len(unimodal) == 24
        assert Counter(p.label for p in unimodal) == {name: 2 for name in CLASS_NAMES}


def test_plan_with_uneven_counts_stays_balanced_within_one() -> None:
    plans = plan_dataset(50, seed=1, config=SynthConfig(unimodal_fraction=0.0))
    assert {p.modalities for p in plans} == {"audio+video"}  # unimodal_fraction=0: none
    per_class = Counter(p.label for p in plans)
    assert max(per_class.values()) - min(per_class.values()) <= 1
    splits = Counter(p.split for p in plans)
    assert splits == {"train": 35, "val": 7, "test": 8}  # cuts at 35 and 42.5 of 50; 42 falls after 42.5 - 0.5
    for name in CLASS_NAMES:
        class_plans = [p for p in plans if p.label == name]
        train = sum(p.split == "train" for p in class_plans)
        assert abs(train - 0.7 * len(class_plans)) <= 1, name


def test_plan_captions_every_kind_in_proportion_and_deterministically() -> None:
    plans = plan_dataset(240, seed=3)
    for kind, count in (("audio+video", 240), ("audio", 24), ("video", 24)):
        kind_plans = [p for p in plans if p.modalities == kind]
        captioned = [p for p in kind_plans if p.captions]
        assert len(kind_plans) == count and len(captioned) == round(0.85 * count), kind
        assert {len(p.captions) for p in captioned} == {synth.CAPTIONS_PER_CLIP}
    again = plan_dataset(240, seed=3)
    assert [p.captions for p in again] == [p.captions for p in plans]
    other = plan_dataset(240, seed=4)
    assert [p.captions for p in other] != [p.captions for p in plans]
    # caption_fraction only decides which files have text: the rest of the plan is unchanged.
    none = plan_dataset(240, seed=3, config=SynthConfig(caption_fraction=0.0))
    every = plan_dataset(240, seed=3, config=SynthConfig(caption_fraction=1.0))
    assert all(not p.captions for p in none) and all(p.captions for p in every)
    strip = lambda ps: [dataclasses.replace(p, captions=()) for p in ps]  # noqa: E731
    assert strip(none) == strip(plans) == strip(every)
    # A captioned clip gets the same captions whatever the fraction (its own stream).
    assert all(p.captions == q.captions for p, q in zip(plans, every) if p.captions)


def test_scene_coupling_tints_exactly_its_share_of_video_files_by_their_sound() -> None:
    plans = plan_dataset(240, seed=3, config=SynthConfig(scene_coupling=0.5))
    for kind, count in (("audio+video", 240), ("audio", 24), ("video", 24)):
        in_scene = [p for p in plans if p.modalities == kind and p.scene_tint is not None]
        assert len(in_scene) == (0 if kind == "audio" else round(0.5 * count)), kind  # audio-only files have no scene
        assert all(p.scene_tint == synth.SCENE_TINTS[p.audio_factor] for p in in_scene)
    # Off by default, and only the tint changes: the rest of the plan is the same.
    default = plan_dataset(240, seed=3)
    assert all(p.scene_tint is None for p in default)
    assert [dataclasses.replace(p, scene_tint=None) for p in plans] == default


def test_a_scene_tint_moves_only_the_background() -> None:
    """The same clip rendered with and without its scene: the background's colour shifts by the
    tint (less the random tint it replaces), the shape's pixels do not move."""
    rng = lambda: np.random.default_rng(5)  # noqa: E731
    plain = render_video("green_square", 1.0, 4, 96, 72, rng()).astype(np.float64)
    tint = synth.SCENE_TINTS["bursts"]
    scene = render_video("green_square", 1.0, 4, 96, 72, rng(), scene_tint=tint).astype(np.float64)
    changed = np.abs(scene - plain).max(axis=-1) > 0
    assert 0.6 < changed.mean() < 0.99  # the background, not the shape
    shift = (scene - plain)[changed].mean(axis=0)
    random_tint = np.random.default_rng(5)
    random_tint.uniform(55, 170)
    expected = np.asarray(tint) - random_tint.uniform(-15, 15, size=3)
    np.testing.assert_allclose(shift, expected, atol=4.0)  # clipping at 0/255 aside


def test_captions_use_every_synonym_and_template_not_the_label() -> None:
    """The text names the class through varied wording: every synonym and template occurs, and
    no caption spells out the label."""
    captions = [c for p in plan_dataset(240, seed=0) for c in p.captions]
    text = "\n".join(captions).lower()
    for phrases in (*synth.SOUND_WORDS.values(), *synth.SHAPE_WORDS.values()):
        for phrase in phrases:
            assert phrase in text, phrase
    for template in synth.CAPTION_TEMPLATES:
        fixed = max(template.replace("{sound}", "|").replace("{shape}", "|").split("|"), key=len).strip(" ,")
        assert fixed in text, template
    # "bursts" and "chirp" are ordinary words; the other factor names and the "+" are not.
    assert not any(name in text for name in ("lowtone", "hightone", "_", "+"))


def test_plan_keeps_odd_frame_sizes_away_from_h264() -> None:
    plans = [p for p in plan_dataset(240, seed=0) if p.has_video]
    odd = [p for p in plans if p.width % 2 or p.height % 2]
    assert odd, "no odd frame sizes planned"
    assert {p.recipe.video_codec for p in odd} <= {"libvpx-vp9", "mjpeg"}
    assert {(p.width, p.height) for p in plans} >= {(96, 72), (72, 96), (80, 80), (112, 64)}
    rates = {p.sample_rate for p in plans if p.has_audio}
    assert {16000, 22050, 44100, 48000} <= rates
    assert {p.channels for p in plans if p.has_audio} == {1, 2}


# --------------------------------------------------------------------------- the written dataset


def test_manifest_and_side_files(synth) -> None:
    with (synth.root / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        assert tuple(next(csv.reader(handle))) == MANIFEST_COLUMNS
    counts = Counter(row["modalities"] for row in synth.rows)
    assert counts == {"audio+video": 24, "audio": 12, "video": 12}
    for row in synth.rows:
        path = synth.root / row["path"]
        assert path.is_file() and path.stat().st_size > 500, row["path"]
        assert row["label"] == f"{row['audio_factor']}+{row['video_factor']}"
        assert row["start"] == row["end"] == ""
        assert row["split"] in {"train", "val", "test"}
    assert (synth.root / "classes.txt").read_text(encoding="utf-8").splitlines() == list(CLASS_NAMES)
    description = json.loads((synth.root / "dataset.json").read_text(encoding="utf-8"))
    assert description["seed"] == synth.seed and description["clips"] == synth.clips
    assert description["accuracy_ceilings_top1"]["audio"] == pytest.approx(1 / 3)
    assert description["config"]["unimodal_fraction"] == 0.5
    assert sum(description["files"]["audio+video"].values()) == 24
    readme = (synth.root / "README.md").read_text(encoding="utf-8")
    assert "33.3%" in readme and "25.0%" in readme and "--seed 7" in readme


def test_captions_in_the_manifest_describe_the_class(synth) -> None:
    from training.data.synth import CAPTIONS_PER_CLIP, SHAPE_WORDS, SOUND_WORDS
    from training.data.text import TextSpec, tokenize

    for kind, count in (("audio+video", 24), ("audio", 12), ("video", 12)):
        captioned = [row for row in synth.rows_with(kind) if row["captions"]]
        assert len(captioned) == round(synth.config.caption_fraction * count), kind
    records = {r.path: r for r in read_manifest(synth.root / "manifest.csv")}
    for row in synth.rows:
        captions = records[(synth.root / row["path"]).absolute()].captions
        if not row["captions"]:
            assert captions == ()
            continue
        assert captions == tuple(row["captions"].split("|")) and len(captions) == CAPTIONS_PER_CLIP
        assert len(set(captions)) > 1, row["path"]  # not one caption repeated
        sounds, shapes = SOUND_WORDS[row["audio_factor"]], SHAPE_WORDS[row["video_factor"]]
        other_sounds = [p for f, ps in SOUND_WORDS.items() if f != row["audio_factor"] for p in ps]
        other_shapes = [p for f, ps in SHAPE_WORDS.items() if f != row["video_factor"] for p in ps]
        for caption in captions:
            lowered = caption.lower()
            assert any(p in lowered for p in sounds) and any(p in lowered for p in shapes), caption
            assert not any(p in lowered for p in other_sounds + other_shapes), caption
            assert 1 <= len(tokenize(caption)) <= TextSpec().max_words, caption  # never clipped


def test_manifest_round_trips_through_read_manifest(synth) -> None:
    dataset = read_manifest(synth.root / "manifest.csv")
    assert dataset.classes == list(CLASS_NAMES)  # classes.txt order, not alphabetical
    assert not dataset.multilabel
    assert len(dataset) == len(synth.rows)
    for record, row in zip(dataset.records, synth.rows):
        assert record.path == (synth.root / row["path"]).absolute()
        assert record.labels == (row["label"],)
        assert (record.split, record.modalities) == (row["split"], row["modalities"])
        assert record.start is None and record.end is None
        assert record.extra["audio_factor"] == row["audio_factor"]
        assert record.extra["container"] == row["container"]
    summary = dataset.summary()
    assert "48 clips, 12 classes" in summary and "audio+video 24, audio 12, video 12" in summary


def test_streams_match_modalities_and_manifest(synth) -> None:
    # Compare codec ids, not decoder names: FFmpeg decodes mp3 with a decoder called "mp3float".
    codec_ids = {short: av.Codec(name, "r").id for short, name in
                 {"h264": "h264", "vp9": "vp9", "mjpeg": "mjpeg", "aac": "aac", "opus": "opus",
                  "flac": "flac", "pcm": "pcm_s16le", "mp3": "mp3", "vorbis": "vorbis"}.items()}  # fmt: skip
    for row in synth.rows:
        path = synth.root / row["path"]
        assert path.suffix == "." + row["container"]
        with av.open(str(path)) as container:
            audio, video = container.streams.audio, container.streams.video
            # Unimodal files lack the other stream entirely (not silence, not black frames).
            assert len(audio) == (0 if row["modalities"] == "video" else 1), row["path"]
            assert len(video) == (0 if row["modalities"] == "audio" else 1), row["path"]
            expected_codecs = [codec_ids[c] for c in row["codecs"].split("+")]
            actual_codecs = [s.codec_context.codec.id for s in (*video, *audio)]
            assert actual_codecs == expected_codecs, row["path"]
            if video:
                assert (video[0].codec_context.width, video[0].codec_context.height) == (int(row["width"]), int(row["height"]))
                frames = sum(1 for _ in container.decode(video=0))
                assert frames == round(synth.config.clip_seconds * synth.config.fps), row["path"]
            if audio:
                # Opus always decodes at 48 kHz; the manifest records 48 kHz for Opus files.
                assert audio[0].codec_context.sample_rate == int(row["sample_rate"])
                assert audio[0].codec_context.layout.nb_channels == int(row["channels"])


def test_formats_spread_over_containers_and_codecs(synth) -> None:
    def formats(kind: str) -> set[tuple[str, str]]:
        return {(row["container"], row["codecs"]) for row in synth.rows_with(kind)}

    assert formats("audio+video") == {
        ("mp4", "h264+aac"), ("webm", "vp9+opus"), ("mkv", "h264+flac"), ("mkv", "h264+opus"), ("avi", "mjpeg+pcm"),
    }  # fmt: skip
    assert formats("audio") == {("wav", "pcm"), ("flac", "flac"), ("mp3", "mp3"), ("m4a", "aac"), ("ogg", "vorbis")}
    assert formats("video") == {("mp4", "h264"), ("webm", "vp9")}


def test_audio_factor_is_audible_in_every_file(synth) -> None:
    rows = [row for row in synth.rows if row["modalities"] != "video"]
    heard = {row["path"]: classify_sound(decode_audio_16k_mono(synth.root / row["path"])) for row in rows}
    assert heard == {row["path"]: row["audio_factor"] for row in rows}


def test_video_factor_is_visible_in_every_file(synth) -> None:
    colours = {"red_disc": ("red", "disc"), "green_square": ("green", "square"), "blue_triangle": ("blue", "triangle")}
    seen, expected = {}, {}
    for row in synth.rows:
        if row["modalities"] == "audio":
            continue
        frames = decode_video_frames(synth.root / row["path"])
        shapes = [find_shape(frames[i]) for i in (0, len(frames) // 2, len(frames) - 1)]
        colour = Counter(c for c, _ in shapes).most_common(1)[0][0]
        seen[row["path"]] = (colour, classify_shape(float(np.median([k for _, k in shapes]))))
        expected[row["path"]] = colours[row["video_factor"]]
    assert seen == expected


def test_nuisances_vary_between_clips_of_one_class(synth) -> None:
    """Same class, different clips: the pictures and sounds must not be copies."""
    rows = [row for row in synth.rows if row["modalities"] == "audio+video" and row["label"] == synth.rows[0]["label"]]
    assert len(rows) == 2
    first, second = (decode_video_frames(synth.root / row["path"])[0] for row in rows)
    if first.shape == second.shape:
        assert np.abs(first.astype(int) - second).mean() > 5
    sounds = [decode_audio_16k_mono(synth.root / row["path"])[:16000] for row in rows]
    assert np.abs(sounds[0] - sounds[1]).mean() > 0.01


def test_same_seed_gives_identical_bytes_across_worker_counts(tmp_path: Path) -> None:
    config = SynthConfig(clip_seconds=1.0, unimodal_fraction=0.5)
    one = generate_dataset(tmp_path / "one", clips=12, seed=5, config=config, workers=1, progress=False).parent
    two = generate_dataset(tmp_path / "two", clips=12, seed=5, config=config, workers=2, progress=False).parent
    other = generate_dataset(tmp_path / "other", clips=12, seed=6, config=config, progress=False).parent

    digests_one, digests_two, digests_other = file_digests(one), file_digests(two), file_digests(other)
    assert len(digests_one) == 12 + 6 + 6 + 4  # media + manifest.csv, classes.txt, dataset.json, README.md
    assert digests_one == digests_two
    assert digests_one["manifest.csv"] != digests_other["manifest.csv"]
    media = [name for name in digests_one if "/" in name]
    differing = [name for name in media if digests_one[name] != digests_other.get(name)]
    assert len(differing) == len(media), "a different seed should change every file"
    # Captions change only the manifest: no media byte depends on them.
    uncaptioned = SynthConfig(clip_seconds=1.0, unimodal_fraction=0.5, caption_fraction=0.0)
    bare = file_digests(generate_dataset(tmp_path / "bare", clips=12, seed=5, config=uncaptioned, progress=False).parent)
    assert {name: bare[name] for name in media} == {name: digests_one[name] for name in media}
    assert bare["manifest.csv"] != digests_one["manifest.csv"]
    # And the clip length follows the config.
    with av.open(str(one / "av" / "av_00000.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 12


def test_avserve_media_sees_the_factors_at_model_resolution(synth) -> None:
    """What a tiny model gets (4 frames of 32 px, 1 s at 16 kHz) still carries both factors."""
    from avserve.media import decode_audio, decode_video, probe

    for row in synth.rows:
        path = synth.root / row["path"]
        info = probe(path)
        assert (info.audio is not None, info.video is not None) == (
            row["modalities"] != "video",
            row["modalities"] != "audio",
        ), row["path"]
        if info.audio is not None:
            audio = decode_audio(path, sample_rate=16000, start=0.5, duration=1.0)
            assert classify_sound(audio.samples) == row["audio_factor"], row["path"]
        if info.video is not None:
            frames = decode_video(path, num_frames=4, size=32).frames.astype(np.int16)
            saturated = (frames.max(axis=3) - frames.min(axis=3)) > 90
            for frame, mask in zip(frames, saturated):
                assert mask.sum() >= 4, f"{row['path']}: shape not visible in a 32 px centre crop"
                colour = ("red", "green", "blue")[int(np.argmax(frame[mask].mean(axis=0)))]
                assert row["video_factor"].startswith(colour + "_"), row["path"]
