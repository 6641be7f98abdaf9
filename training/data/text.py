"""Captions as word ids for text-using pretraining (VATT's MIL-NCE); torch-free.

Text is pretraining-only: it is read from the manifest's `captions` column (records.py), turned
into ids here, and fed to a text tower that belongs to the objective, never to a served model.

Tokenising (`tokenize`): the text is NFKC-normalised and case-folded, "\u2019" becomes "'", and
the words are `re.findall(r"[^\\W_]+(?:'[^\\W_]+)?", text)`: runs of letters and digits, with
one inner apostrophe kept ("don't", "dog's"). For ASCII text this is the same as
`[a-z0-9]+(?:'[a-z]+)?` on the lower-cased text except that digits may follow the apostrophe;
other scripts keep their letters instead of losing them. Punctuation separates words and is
dropped.

Word ids (`word_id`): 1 + (the first 8 bytes of blake2b(word, UTF-8) as an unsigned
little-endian integer) mod (vocab_size - 1). Id 0 is padding and never a word. A *hashing*
tokenizer rather than a learned vocabulary because:

- there is no vocabulary file: nothing to ship with checkpoints or keep in step with them, and
  nothing to download;
- ids do not depend on the training split, so a word seen only at evaluation (or in another
  dataset) gets the same id it would get anywhere else;
- ids are the same in every run, process and machine. Python's `hash()` of a str is salted per
  process (PYTHONHASHSEED), so it must never be used here; blake2b is in hashlib everywhere.

Collisions: with n distinct words in m = vocab_size - 1 = 65,535 buckets, the expected number
of word pairs sharing an id is n(n-1)/2m and the share of words that collide with some other
word is 1 - (1 - 1/m)^(n-1):

    n = 1,000 words    7.6 colliding pairs    1.5 % of words
    n = 2,000 words   30.5 colliding pairs    3.0 % of words
    n = 5,000 words  190.7 colliding pairs    7.3 % of words

A collision makes two words share one embedding row; under Zipf's law almost all of them are
between rare words. For the synthetic captions (`training.data.synth`, about 80 words) the
expectation is 0.05 pairs and the tests check there are none.

VATT (Akbari et al., 2021) uses at most 16 words per caption "by clipping or padding" (Sec. 3.1)
and, for MIL-NCE, the P = 5 captions nearest in time as positives (Sec. 3.4): `TextSpec`'s
defaults. `encode_captions` gives the per-clip arrays the dataset adds to each item.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

import numpy as np

PAD_ID = 0
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


@dataclass(frozen=True)
class TextSpec:
    """What an objective reads as text: the id space and the per-clip array shape."""

    vocab_size: int = 2**16  # ids 1 .. vocab_size - 1 are words, 0 is padding
    max_words: int = 16  # words kept per caption (VATT Sec. 3.1: clip or pad to 16)
    max_captions: int = 5  # captions kept per clip (MIL-NCE's P = 5, VATT Sec. 3.4)

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (0 is padding), got {self.vocab_size}")
        if self.max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {self.max_words}")
        if self.max_captions < 1:
            raise ValueError(f"max_captions must be >= 1, got {self.max_captions}")


def tokenize(text: str) -> list[str]:
    """The words of `text` (see the module docstring): "Don't STOP, 2 dogs!" -> ["don't", "stop", "2", "dogs"]."""
    normal = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")
    return _WORD.findall(normal)


@functools.lru_cache(maxsize=65536)
def word_id(word: str, vocab_size: int = TextSpec.vocab_size) -> int:
    """1 + stable hash of `word` mod (vocab_size - 1); never 0 (padding)."""
    digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (vocab_size - 1)


def encode_caption(text: str, spec: TextSpec = TextSpec()) -> np.ndarray:
    """One caption as int64 [max_words]: its first max_words word ids, then zeros."""
    ids = [word_id(word, spec.vocab_size) for word in tokenize(text)[: spec.max_words]]
    out = np.zeros(spec.max_words, dtype=np.int64)
    out[: len(ids)] = ids
    return out


def encode_captions(captions: Sequence[str], spec: TextSpec = TextSpec()) -> tuple[np.ndarray, np.ndarray]:
    """A clip's captions as (ids int64 [max_captions, max_words], caption_mask bool [max_captions]).

    The first max_captions captions that have at least one word fill the rows in order; a
    caption without words (blank, or only punctuation) counts as absent and is skipped. Unused
    rows are all zeros with mask False. A clip without captions gives all zeros and an all-False
    mask (VATT feeds zeros and leaves such clips out of MIL-NCE).
    """
    if isinstance(captions, str):
        raise TypeError("captions must be a sequence of strings, not one string")
    ids = np.zeros((spec.max_captions, spec.max_words), dtype=np.int64)
    mask = np.zeros(spec.max_captions, dtype=bool)
    row = 0
    for caption in captions:
        if row == spec.max_captions:
            break
        encoded = encode_caption(caption, spec)
        if encoded[0] == PAD_ID:  # no words
            continue
        ids[row], mask[row] = encoded, True
        row += 1
    return ids, mask
