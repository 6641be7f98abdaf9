import dataclasses

import pytest
import torch

from training.data.dataset import AVClipDataset, EpochSampler, Preprocessing, SampleError
from training.data.records import load_records

PRE = Preprocessing(sample_rate=16000, clip_seconds=1.5, num_frames=4, image_size=48)


@pytest.fixture(scope="module")
def records(synth_dir):
    return load_records(synth_dir)


def make(records, split="train", **kw):
    rs = records.split(split)
    return AVClipDataset(rs.records, records.classes, records.multilabel, PRE, **kw)


def test_train_and_eval_items(records):
    train = make(records, train=True)
    item = train[(0, 0)]
    assert item["audio"].shape == (PRE.clip_samples,) and item["audio"].dtype == torch.float32
    assert item["video"].shape == (4, 48, 48, 3) and item["video"].dtype == torch.uint8
    assert item["target"].dtype == torch.int64 and 0 <= int(item["target"]) < len(records.classes)
    assert float(item["audio"].abs().max()) <= 1.0 + 1e-6
    ev = make(records, "val", train=False)
    a, b = ev[0], ev[0]
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["audio"], b["audio"])  # eval is deterministic


def test_train_randomness_is_keyed_by_epoch_and_index(records):
    train = make(records, train=True)
    same = train[(3, 1)], train[(3, 1)]
    assert torch.equal(same[0]["video"], same[1]["video"]) and torch.equal(same[0]["audio"], same[1]["audio"])
    other = train[(3, 2)]
    assert not torch.equal(other["video"], same[0]["video"])


def test_missing_modalities_zero_fill_or_skip(records):
    zero = make(records, train=False, missing="zero")
    skip = make(records, train=False, missing="skip")
    assert len(skip) < len(zero) == len(records.split("train").records)
    flags = [(bool(zero[i]["has_audio"]), bool(zero[i]["has_video"])) for i in range(len(zero))]
    assert (True, False) in flags and (False, True) in flags
    i = flags.index((True, False))
    assert int(zero[i]["video"].abs().sum()) == 0 and float(zero[i]["audio"].abs().sum()) > 0
    j = flags.index((False, True))
    assert float(zero[j]["audio"].abs().sum()) == 0
    assert all(bool(skip[k]["has_audio"]) and bool(skip[k]["has_video"]) for k in range(len(skip)))
    # an audio-only model drops video-only clips and never returns video
    audio_only = make(records, train=False, modalities=("audio",))
    assert "video" not in audio_only[0] and all(bool(audio_only[k]["has_audio"]) for k in range(len(audio_only)))


def test_multilabel_targets_are_multi_hot(records):
    ds = AVClipDataset(records.split("val").records, records.classes, True, PRE, train=False)
    t = ds[0]["target"]
    assert t.dtype == torch.float32 and t.shape == (len(records.classes),) and float(t.sum()) == 1.0


def test_decode_error_names_the_file(records, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    rec = dataclasses.replace(records.split("train").records[0], path=bad, modalities="audio+video")
    ds = AVClipDataset([rec], records.classes, False, PRE, train=False)
    with pytest.raises(SampleError, match="broken.mp4"):
        ds[0]


def test_epoch_sampler_shards_and_skips():
    full = [i for i, _ in EpochSampler(10, shuffle=True, seed=1)]
    assert sorted(full) == list(range(10))
    r0 = EpochSampler(10, shuffle=True, seed=1, num_replicas=2, rank=0, drop_last=True)
    r1 = EpochSampler(10, shuffle=True, seed=1, num_replicas=2, rank=1, drop_last=True)
    a, b = [i for i, _ in r0], [i for i, _ in r1]
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    r0.set_epoch(3, skip=0)
    whole = [i for i, _ in r0]
    r0.set_epoch(3, skip=2)
    assert len(r0) == 3 and list(r0) == [(i, 3) for i in whole[2:]]


def test_dataloader_with_workers(records):
    from training.data.dataset import collate

    ds = make(records, train=True)
    sampler = EpochSampler(len(ds), shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["audio"].shape == (4, PRE.clip_samples) and batch["video"].shape == (4, 4, 48, 48, 3)
    assert batch["has_audio"].dtype == torch.bool
    # same items whatever the worker count
    i0 = int(batch["index"][0])
    assert torch.equal(batch["video"][0], ds[(i0, 0)]["video"])


def test_text_fields_only_when_the_dataset_is_given_a_text_spec(records):
    from training.data.dataset import collate
    from training.data.text import TextSpec, encode_captions

    plain = make(records, train=False)
    assert not {"text", "text_mask", "has_text"} & set(plain[0])

    spec = TextSpec(max_words=8, max_captions=3)
    captioned = [r for r in records.split("train").records if r.captions]
    assert captioned, "the synthetic set should have captioned clips"
    bare = dataclasses.replace(captioned[0], captions=())
    ds = AVClipDataset([captioned[0], bare], records.classes, records.multilabel, PRE, train=True, text=spec)
    item = ds[(0, 0)]
    assert item["text"].dtype == torch.int64 and item["text"].shape == (3, 8)
    assert item["text_mask"].dtype == torch.bool and item["text_mask"].shape == (3,)
    assert item["has_text"].dtype == torch.bool and item["has_text"].shape == () and bool(item["has_text"])
    ids, mask = encode_captions(captioned[0].captions, spec)
    assert torch.equal(item["text"], torch.from_numpy(ids)) and item["text_mask"].tolist() == mask.tolist() == [True] * 3
    assert int(item["text"][0, 0]) > 0

    empty = ds[(1, 0)]  # a clip without captions: zeros, nothing masked in, no text
    assert empty["text"].shape == (3, 8) and not empty["text"].any()
    assert not empty["text_mask"].any() and not bool(empty["has_text"])

    batch = collate([item, empty])
    assert batch["text"].shape == (2, 3, 8) and batch["text"].dtype == torch.int64
    assert batch["text_mask"].shape == (2, 3) and batch["has_text"].tolist() == [True, False]
