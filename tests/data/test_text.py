"""The hashing caption tokenizer: stable ids without a vocabulary file, VATT's clip/pad shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.data.text import PAD_ID, TextSpec, encode_caption, encode_captions, tokenize, word_id

REPO = Path(__file__).resolve().parents[2]


def test_spec_defaults_follow_vatt_and_reject_impossible_values() -> None:
    spec = TextSpec()
    assert (spec.vocab_size, spec.max_words, spec.max_captions) == (2**16, 16, 5)
    for bad in ({"vocab_size": 1}, {"max_words": 0}, {"max_captions": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TextSpec(**bad)


def test_tokenize_lowercases_and_splits_on_punctuation() -> None:
    assert tokenize("Don't STOP, 2 dogs!") == ["don't", "stop", "2", "dogs"]
    assert tokenize("a red-ball; the dog\u2019s bark") == ["a", "red", "ball", "the", "dog's", "bark"]
    assert tokenize("Caf\u00e9 \uff32\uff25\uff24") == ["caf\u00e9", "red"]  # NFKC: full-width letters are letters
    assert tokenize("snake_case ... ''") == ["snake", "case"]
    assert tokenize("  ,;!  ") == []


def test_word_ids_are_in_range_never_padding_and_stable() -> None:
    words = [f"w{i}" for i in range(2000)]
    ids = [word_id(w) for w in words]
    assert min(ids) >= 1 and max(ids) <= 2**16 - 1
    assert word_id("dog", 3) in (1, 2)  # a tiny vocabulary: one padding id, two word ids
    assert word_id("dog") != word_id("dogs")
    # Pinned values: changing the hash would silently change what every checkpoint's text
    # embedding rows mean.
    assert [word_id(w) for w in ("dog", "red", "circle")] == [17521, 17822, 57576]


def test_ids_are_the_same_in_another_process_with_another_hash_seed() -> None:
    captions = ["A red circle drifts", "low hum and a green box", "Don't look"]
    here = encode_captions(captions)[0].tolist()
    code = (
        "import json, sys\n"
        "from training.data.text import encode_captions\n"
        "print(json.dumps(encode_captions(json.loads(sys.argv[1]))[0].tolist()))\n"
    )
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(captions)], cwd=REPO, env=env, capture_output=True, text=True, check=True
        )
        assert json.loads(out.stdout) == here


def test_one_caption_is_clipped_or_padded_to_max_words() -> None:
    spec = TextSpec(max_words=4)
    short = encode_caption("red disc", spec)
    assert short.dtype == np.int64 and short.shape == (4,)
    assert short.tolist() == [word_id("red"), word_id("disc"), PAD_ID, PAD_ID]
    long = encode_caption("one two three four five six", spec)
    assert long.tolist() == [word_id(w) for w in ("one", "two", "three", "four")]


def test_captions_fill_rows_in_order_and_mask_the_rest() -> None:
    spec = TextSpec(max_words=3, max_captions=4)
    ids, mask = encode_captions(["red disc", "low hum plays loudly"], spec)
    assert ids.dtype == np.int64 and ids.shape == (4, 3)
    assert mask.dtype == np.bool_ and mask.tolist() == [True, True, False, False]
    assert ids[0].tolist() == [word_id("red"), word_id("disc"), 0]
    assert ids[1].tolist() == [word_id("low"), word_id("hum"), word_id("plays")]
    assert not ids[2:].any()


def test_only_the_first_max_captions_are_kept() -> None:
    spec = TextSpec(max_captions=2)
    ids, mask = encode_captions(["a", "b", "c"], spec)
    assert mask.tolist() == [True, True]
    assert ids[:, 0].tolist() == [word_id("a"), word_id("b")]


def test_a_caption_without_words_counts_as_absent() -> None:
    spec = TextSpec(max_captions=3)
    ids, mask = encode_captions(["", "?!", "red disc"], spec)
    assert mask.tolist() == [True, False, False]  # the empty ones take no row
    assert ids[0, :2].tolist() == [word_id("red"), word_id("disc")]
    none_ids, none_mask = encode_captions([], spec)
    assert not none_mask.any() and not none_ids.any()
    assert not encode_captions(["  ", "..."], spec)[1].any()
    with pytest.raises(TypeError, match="sequence of strings"):
        encode_captions("red disc", spec)


def test_the_synthetic_caption_vocabulary_has_no_collisions() -> None:
    from training.data.synth import CAPTION_TEMPLATES, NUISANCE_WORDS, SHAPE_WORDS, SOUND_WORDS

    phrases = [*CAPTION_TEMPLATES, *NUISANCE_WORDS, *(p for ps in SOUND_WORDS.values() for p in ps)]
    phrases += [p for ps in SHAPE_WORDS.values() for p in ps]
    vocabulary = {w for phrase in phrases for w in tokenize(phrase.replace("{", " ").replace("}", " "))}
    vocabulary -= {"sound", "shape"}
    assert len(vocabulary) > 50
    assert len({word_id(w) for w in vocabulary}) == len(vocabulary)
