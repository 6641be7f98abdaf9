"""A synthetic audio-visual dataset whose labels need *both* modalities.

Why this exists: to test training, export and serving end to end we need a dataset that is
small, fast to make, free of licences, and that *proves* fusion works. So every class is a
pair of independent factors, one audible and one visible:

    class = audio factor x video factor        e.g. "hightone+red_disc"

    audio factors (4): lowtone   steady ~260 Hz tone with two harmonics
                       hightone  steady ~1.9 kHz tone
                       bursts    rhythmic clicks of white noise, 4-7 per second
                       chirp     repeated rising sweeps, ~400 Hz -> ~3.2 kHz
    video factors (3): red_disc, green_square, blue_triangle, moving over a noisy
                       background

Nuisances keep it from being trivially constant: sound onset/offset, loudness, +-6 % pitch
jitter, burst rate and sweep period, background noise level, stereo balance; shape size,
path (linear drift plus a wobble), rotation, colour jitter, background brightness, tint,
gradient and texture. The factors stay distinct at the resolution a tiny model sees (4-8
frames of 32-64 px, 1-2 s of 16 kHz audio): the colours are saturated against a near-grey
background, the shape stays inside the frame's centred square (so a centre crop never
loses it), and all tonal energy sits below ~4 kHz. Every sound lasts from its onset
(within the first 20 % of the clip) to near the end, so a 1 s window anywhere holds it.

Accuracy ceilings (top-1, balanced classes). Every class has the same number of clips, so
given the audio factor the video factor is uniform over its 3 values, and vice versa:

    audio only   1/len(VIDEO_FACTORS) = 33.3 %   (knows the sound, must guess the shape)
    video only   1/len(AUDIO_FACTORS) = 25.0 %
    audio+video  100 %                            (chance is 1/12 = 8.3 %)

`accuracy_ceiling(modalities, top_k)` gives these numbers (top-k: min(1, k / unseen)).

Files are real encodes written with PyAV, spread over containers and codecs so that the
decoding path sees what users upload: audio+video as mp4 (H.264+AAC), webm (VP9+Opus),
mkv (H.264+FLAC or H.264+Opus) and avi (MJPEG+PCM); audio at 16/22.05/44.1/48 kHz, mono
or stereo; frame sizes that include portrait, square and odd ones (VP9/MJPEG only, since
H.264 4:2:0 needs even sizes). `unimodal_fraction` adds as many audio-only files (wav,
flac, mp3, m4a, ogg/Vorbis; no video stream at all) and video-only files (mp4, webm; no
audio stream at all). Unimodal files still carry the full 12-way label: the factor of the
missing modality is part of the label but cannot be observed, which is exactly what the
ceilings above measure.

Captions (text for VATT-style pretraining; never served): `caption_fraction` of the files
(default 85 %, of each modality set) get CAPTIONS_PER_CLIP = 5 captions, the rest none, as
AudioSet clips have no text in VATT's pretraining. Every caption names the clip's sound and its
shape with a synonym (SOUND_WORDS, SHAPE_WORDS: "a crimson dot drifts across the screen while a
bass drone plays"), in one of several templates, with nuisance words ("slowly", "camera", ...)
around it: the text carries the whole class, audio-only and video-only files included, but is
not the label string. At most 16 words, so `training.data.text.TextSpec()` never clips one.

Determinism: everything about clip *i* of a kind (its class, format, rates, size, content and
captions) comes from `SeedSequence([seed, kind, i])`, and encoders run single-threaded with
FFmpeg's bitexact flags, so the same seed gives byte-identical files and manifest whether
one or many worker processes encode them.

Output layout (see docs/synthetic-data.md):

    out_dir/manifest.csv   path,label,split,start,end,modalities,audio_factor,video_factor,
                           container,codecs,sample_rate,channels,width,height,captions
                           (captions: "|"-separated, blank for uncaptioned files)
    out_dir/classes.txt    one class per line, in index order (CLASS_NAMES)
    out_dir/dataset.json   generator config, seed, counts, ceilings
    out_dir/README.md      the same for humans
    out_dir/av/, audio_only/, video_only/   the media files
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

import av
import numpy as np
from av.codec.context import Flags
from tqdm import tqdm

from training.data.text import TextSpec


AUDIO_FACTORS: tuple[str, ...] = ("lowtone", "hightone", "bursts", "chirp")
VIDEO_FACTORS: tuple[str, ...] = ("red_disc", "green_square", "blue_triangle")
# Audio-major order: class index = audio_index * len(VIDEO_FACTORS) + video_index.
CLASS_NAMES: tuple[str, ...] = tuple(f"{a}+{v}" for a in AUDIO_FACTORS for v in VIDEO_FACTORS)
MODALITIES: tuple[str, ...] = ("audio+video", "audio", "video")
SPLITS: tuple[str, ...] = ("train", "val", "test")

MANIFEST_COLUMNS: tuple[str, ...] = (
    "path", "label", "split", "start", "end", "modalities", "audio_factor", "video_factor",
    "container", "codecs", "sample_rate", "channels", "width", "height", "captions",
)  # fmt: skip

# ---- captions: synonyms for each factor, templates and nuisance words (see the docstring)
CAPTIONS_PER_CLIP = 5
CAPTION_SEPARATOR = "|"  # as training.data.records reads the captions column
SOUND_WORDS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "lowtone": ("low hum", "deep tone", "bass drone", "low pitched note"),
    "hightone": ("high whistle", "shrill tone", "high pitched beep", "piercing note"),
    "bursts": ("clicking", "crackling bursts", "rapid clicks", "noise bursts"),
    "chirp": ("rising chirp", "sweeping whistle", "upward sweep", "siren like glide"),
})  # fmt: skip
SHAPE_WORDS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "red_disc": ("red circle", "red disc", "crimson dot", "red ball"),
    "green_square": ("green square", "green box", "emerald block", "green tile"),
    "blue_triangle": ("blue triangle", "blue wedge", "navy triangle", "blue arrowhead"),
})  # fmt: skip
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {shape} drifts across the screen while a {sound} plays",
    "{sound} and a {shape}",
    "video of a {shape} with {sound} in the background",
    "you can hear a {sound} as the {shape} moves",
    "{shape} moving around, {sound}",
    "the {sound} goes on while a {shape} wobbles",
    "a {shape} on screen and a {sound}",
)
NUISANCE_WORDS: tuple[str, ...] = (
    "slowly", "grey background", "noisy", "today", "camera", "look", "again", "short clip",
    "steady shot", "quietly", "in the middle", "wow", "test recording", "blurry", "here",
)  # fmt: skip
_MAX_CAPTION_WORDS = TextSpec().max_words  # 16, VATT's caption length: no caption is ever clipped


def split_class_name(name: str) -> tuple[str, str]:
    """"hightone+red_disc" -> ("hightone", "red_disc")."""
    audio_factor, video_factor = name.split("+", 1)
    return audio_factor, video_factor


def accuracy_ceiling(modalities: str, top_k: int = 1) -> float:
    """Best expected top-k accuracy of any model that only sees `modalities`.

    With balanced classes the unseen factor is uniform given the seen one, so the best
    a model can do is spread its k guesses over the unseen factor's values.
    """
    unseen_choices = {
        "audio+video": 1,
        "audio": len(VIDEO_FACTORS),
        "video": len(AUDIO_FACTORS),
    }
    if modalities not in unseen_choices:
        raise ValueError(f"modalities must be one of {MODALITIES}, got {modalities!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    return min(1.0, top_k / unseen_choices[modalities])


ACCURACY_CEILINGS: Mapping[str, float] = MappingProxyType({m: accuracy_ceiling(m) for m in MODALITIES})
CHANCE_ACCURACY: float = 1.0 / len(CLASS_NAMES)


def class_factors(classes: Sequence[str], modality: str) -> list[str]:
    """Each class's factor carried by `modality` ("audio": the sound, "video": the shape), as
    training.metrics.factor_scores takes them: ["lowtone+red_disc", ...] -> ["lowtone", ...]."""
    index = {"audio": 0, "video": 1}[modality]
    return [split_class_name(c)[index] for c in classes]


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SynthConfig:
    clip_seconds: float = 2.0
    # The rate models decode at, recorded in dataset.json; not a file rate (see below). All
    # tonal energy stays below ~4 kHz, so any rate from 8 kHz up keeps every factor audible.
    sample_rate: int = 16000
    # Rates files are actually written at (intersected with what each codec accepts).
    file_sample_rates: tuple[int, ...] = (16000, 22050, 44100, 48000)
    stereo_fraction: float = 0.35
    fps: int = 12
    # (width, height), drawn uniformly (96x72 listed twice: the common case). Even sizes work
    # with every codec; odd ones are only used where the codec allows them (VP9, MJPEG).
    frame_sizes: tuple[tuple[int, int], ...] = ((96, 72), (96, 72), (112, 64), (80, 80), (72, 96))
    odd_frame_sizes: tuple[tuple[int, int], ...] = ((95, 71), (81, 63))
    unimodal_fraction: float = 0.1
    split_fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    # Files with captions (CAPTIONS_PER_CLIP each), per modality set; the others have none.
    caption_fraction: float = 0.85
    # Files with video whose background (the "scene") is tinted by the clip's *sound*
    # (SCENE_TINTS), per modality set: the context cue real footage has (a beach looks like the
    # waves sound), which audio-visual contrastive objectives learn from. 0 keeps the two
    # modalities independent given the label (the accuracy ceilings above hold); above 0 a
    # video-only model can read the sound from the scene on those files, so they do not.
    scene_coupling: float = 0.0

    def __post_init__(self) -> None:
        if not self.clip_seconds > 0:
            raise ValueError(f"clip_seconds must be > 0, got {self.clip_seconds}")
        if self.sample_rate < 8000:
            raise ValueError(f"sample_rate must be >= 8000 (the sounds reach ~4 kHz), got {self.sample_rate}")
        if not self.file_sample_rates or min(self.file_sample_rates) < 8000:
            raise ValueError(f"file_sample_rates must be non-empty and >= 8000, got {self.file_sample_rates}")
        if self.fps < 1:
            raise ValueError(f"fps must be >= 1, got {self.fps}")
        if not self.frame_sizes or any(w < 32 or h < 32 or w % 2 or h % 2 for w, h in self.frame_sizes):
            raise ValueError(f"frame_sizes must be even and >= 32 px, got {self.frame_sizes}")
        if any(w < 32 or h < 32 for w, h in self.odd_frame_sizes):
            raise ValueError(f"odd_frame_sizes must be >= 32 px, got {self.odd_frame_sizes}")
        if not 0.0 <= self.unimodal_fraction <= 1.0:
            raise ValueError(f"unimodal_fraction must be in [0, 1], got {self.unimodal_fraction}")
        if not 0.0 <= self.stereo_fraction <= 1.0:
            raise ValueError(f"stereo_fraction must be in [0, 1], got {self.stereo_fraction}")
        if not 0.0 <= self.caption_fraction <= 1.0:
            raise ValueError(f"caption_fraction must be in [0, 1], got {self.caption_fraction}")
        if not 0.0 <= self.scene_coupling <= 1.0:
            raise ValueError(f"scene_coupling must be in [0, 1], got {self.scene_coupling}")
        if len(self.split_fractions) != 3 or min(self.split_fractions) < 0 or not math.isclose(sum(self.split_fractions), 1.0):
            raise ValueError(f"split_fractions must be three non-negative numbers summing to 1, got {self.split_fractions}")


@dataclass(frozen=True)
class Recipe:
    """How one kind of file is encoded: a muxer plus at most one video and one audio codec."""

    container: str  # the manifest's `container` column (file extension without the dot)
    muxer: str  # FFmpeg format name
    video_codec: str | None = None
    audio_codec: str | None = None
    sample_rates: tuple[int, ...] = (16000, 22050, 44100, 48000)  # what the audio codec accepts
    channel_counts: tuple[int, ...] = (1, 2)  # what the audio codec accepts
    odd_sizes: bool = False  # libx264 refuses odd sizes with 4:2:0; VP9 and MJPEG do not
    # Encoder options (not hashed: dicts are not hashable, and the codecs identify a recipe).
    video_options: Mapping[str, str] = field(default_factory=dict, hash=False)
    audio_options: Mapping[str, str] = field(default_factory=dict, hash=False)
    audio_bit_rate: int | None = None  # per channel; lossy codecs only

    @property
    def codecs(self) -> str:
        names = [_SHORT_CODEC_NAMES.get(c, c) for c in (self.video_codec, self.audio_codec) if c]
        return "+".join(names)


_SHORT_CODEC_NAMES = {"libx264": "h264", "libvpx-vp9": "vp9", "libopus": "opus", "libmp3lame": "mp3", "pcm_s16le": "pcm"}
# Small files, fast encodes, a keyframe every second (set per stream), one thread each.
# x264's MB-tree rate control made byte-different files from identical frames now and then
# (it depended on what the process had encoded before), so it is off; B-frames stay on so
# decoders still see reordered frames.
_X264 = {"preset": "veryfast", "crf": "26", "threads": "1", "x264-params": "mbtree=0"}
_VP9 = {"deadline": "realtime", "cpu-used": "8", "crf": "34", "b": "0", "row-mt": "0", "threads": "1"}
_MJPEG = {"qmin": "3", "qmax": "8", "threads": "1"}
_OPUS_RATES = (48000,)  # FFmpeg's Opus decoder always outputs 48 kHz; write what it will read
# The default AAC coder ("twoloop") and the slowest Opus/LAME settings cost 2-4x the time
# for no difference that matters on synthetic tones.
_AAC = {"aac_coder": "fast"}
_OPUS = {"compression_level": "5"}
_LAME = {"compression_level": "7"}

AV_RECIPES: tuple[Recipe, ...] = (
    Recipe("mp4", "mp4", "libx264", "aac", video_options=_X264, audio_options=_AAC, audio_bit_rate=48000),
    Recipe(
        "webm", "webm", "libvpx-vp9", "libopus", _OPUS_RATES,
        odd_sizes=True, video_options=_VP9, audio_options=_OPUS, audio_bit_rate=32000,
    ),
    Recipe("mkv", "matroska", "libx264", "flac", video_options=_X264),
    Recipe("mkv", "matroska", "libx264", "libopus", _OPUS_RATES, video_options=_X264, audio_options=_OPUS, audio_bit_rate=32000),
    Recipe("avi", "avi", "mjpeg", "pcm_s16le", (16000, 22050), odd_sizes=True, video_options=_MJPEG),
)
AUDIO_ONLY_RECIPES: tuple[Recipe, ...] = (
    Recipe("wav", "wav", None, "pcm_s16le", (16000, 22050, 44100)),
    Recipe("flac", "flac", None, "flac"),
    Recipe("mp3", "mp3", None, "libmp3lame", audio_options=_LAME, audio_bit_rate=48000),
    Recipe("m4a", "ipod", None, "aac", audio_options=_AAC, audio_bit_rate=48000),
    # FFmpeg's native Vorbis encoder (the only one bundled) is experimental and stereo-only.
    Recipe("ogg", "ogg", None, "vorbis", (22050, 44100, 48000), (2,), audio_options={"strict": "experimental"}),
)
VIDEO_ONLY_RECIPES: tuple[Recipe, ...] = (
    Recipe("mp4", "mp4", "libx264", None, video_options=_X264),
    Recipe("webm", "webm", "libvpx-vp9", None, odd_sizes=True, video_options=_VP9),
)
_RECIPES_BY_KIND = {"audio+video": AV_RECIPES, "audio": AUDIO_ONLY_RECIPES, "video": VIDEO_ONLY_RECIPES}
_DIRECTORY_BY_KIND = {"audio+video": "av", "audio": "audio_only", "video": "video_only"}
_FILE_PREFIX_BY_KIND = {"audio+video": "av", "audio": "a", "video": "v"}


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to write one file, decided before any rendering."""

    modalities: str  # "audio+video" | "audio" | "video"
    index: int  # position among files of the same modalities
    relative_path: str
    label: str
    audio_factor: str
    video_factor: str
    split: str
    recipe: Recipe
    sample_rate: int | None  # None: no audio stream
    channels: int | None
    width: int | None  # None: no video stream
    height: int | None
    entropy: tuple[int, ...]  # seeds this clip's content; see _clip_rngs
    captions: tuple[str, ...] = ()  # () = an uncaptioned file
    scene_tint: tuple[float, float, float] | None = None  # the sound's scene tint (scene_coupling), or None

    @property
    def has_audio(self) -> bool:
        return self.sample_rate is not None

    @property
    def has_video(self) -> bool:
        return self.width is not None

    def manifest_row(self) -> dict[str, str]:
        def text(value: int | None) -> str:
            return "" if value is None else str(value)

        return {
            "path": self.relative_path,
            "label": self.label,
            "split": self.split,
            "start": "",
            "end": "",
            "modalities": self.modalities,
            "audio_factor": self.audio_factor,
            "video_factor": self.video_factor,
            "container": self.recipe.container,
            "codecs": self.recipe.codecs,
            "sample_rate": text(self.sample_rate),
            "channels": text(self.channels),
            "width": text(self.width),
            "height": text(self.height),
            "captions": CAPTION_SEPARATOR.join(self.captions),
        }


def _clip_rngs(entropy: Sequence[int]) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent streams for the plan, the sound and the picture of one clip.

    Separate streams mean an audio-only clip draws its sound exactly as an audio+video clip
    would, and changing how video is drawn never shifts the audio.
    """
    plan_seq, audio_seq, video_seq = np.random.SeedSequence(list(entropy)).spawn(3)
    return np.random.default_rng(plan_seq), np.random.default_rng(audio_seq), np.random.default_rng(video_seq)


def _text_rng(entropy: Sequence[int]) -> np.random.Generator:
    """A fourth independent stream, for the clip's captions.

    `SeedSequence.spawn` numbers its children, so the fourth child leaves the first three (and
    with them every file's bytes) exactly as they were before captions existed.
    """
    return np.random.default_rng(np.random.SeedSequence(list(entropy)).spawn(4)[3])


def make_captions(
    audio_factor: str, video_factor: str, rng: np.random.Generator, count: int = CAPTIONS_PER_CLIP
) -> tuple[str, ...]:
    """`count` captions of a clip of this class: distinct templates (while they last), a random
    synonym of the sound and of the shape in each, and up to two nuisance phrases before or
    after, never past _MAX_CAPTION_WORDS words."""
    sounds, shapes = SOUND_WORDS[audio_factor], SHAPE_WORDS[video_factor]
    order = list(rng.permutation(len(CAPTION_TEMPLATES)))
    captions = []
    for number in range(count):
        template = CAPTION_TEMPLATES[order[number % len(order)]]
        sound, shape = sounds[int(rng.integers(len(sounds)))], shapes[int(rng.integers(len(shapes)))]
        words = template.format(sound=sound, shape=shape).split(" ")
        for _ in range(int(rng.integers(0, 3))):
            nuisance = NUISANCE_WORDS[int(rng.integers(len(NUISANCE_WORDS)))].split(" ")
            at_start = bool(rng.random() < 0.5)
            if len(words) + len(nuisance) <= _MAX_CAPTION_WORDS:
                words = nuisance + words if at_start else words + nuisance
        caption = " ".join(words)
        if rng.random() < 0.3:
            caption = caption[0].upper() + caption[1:]
        captions.append(caption)
    return tuple(captions)


def unimodal_count(clips: int, config: SynthConfig) -> int:
    """How many audio-only (and, separately, video-only) files go with `clips` AV clips."""
    return round(clips * config.unimodal_fraction)


def plan_dataset(clips: int, seed: int, config: SynthConfig | None = None) -> list[ClipPlan]:
    """Decide every file of the dataset: audio+video clips first, then audio-only, then video-only."""
    config = config or SynthConfig()
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    counts = {"audio+video": clips, "audio": unimodal_count(clips, config), "video": unimodal_count(clips, config)}
    plans: list[ClipPlan] = []
    for kind_number, (modalities, count) in enumerate(counts.items()):
        # Class i % 12 balances classes. The recipe advances with i and shifts by one every
        # round of 12, so even a handful of files uses every recipe, and over len(recipes)
        # rounds every class gets every recipe once: no container or codec predicts a label.
        labels = [CLASS_NAMES[i % len(CLASS_NAMES)] for i in range(count)]
        # Its own stream (a spawn key no clip index reaches), so splits never shift clip content.
        split_rng = np.random.default_rng(np.random.SeedSequence([seed, kind_number, 2**31 - 1]))
        splits = stratified_splits(labels, config.split_fractions, split_rng)
        # Which files have captions: exactly round(count * caption_fraction), from a stream of
        # their own (like the splits), so the fraction never shifts clip content.
        caption_rng = np.random.default_rng(np.random.SeedSequence([seed, kind_number, 2**31 - 2]))
        captioned = set(caption_rng.permutation(count)[: round(count * config.caption_fraction)].tolist())
        # Which video files show their sound's scene: likewise exactly round(count * scene_coupling).
        scene_rng = np.random.default_rng(np.random.SeedSequence([seed, kind_number, 2**31 - 3]))
        in_scene = set(scene_rng.permutation(count)[: round(count * config.scene_coupling)].tolist())
        recipes = _RECIPES_BY_KIND[modalities]
        width_digits = max(5, len(str(count)))
        for index in range(count):
            entropy = (seed, kind_number, index)
            plan_rng, _, _ = _clip_rngs(entropy)
            recipe = recipes[(index + index // len(CLASS_NAMES)) % len(recipes)]
            sample_rate = channels = width = height = None
            if recipe.audio_codec:
                rates = [r for r in recipe.sample_rates if r in config.file_sample_rates] or list(recipe.sample_rates)
                sample_rate = int(plan_rng.choice(rates))
                channels = 2 if plan_rng.random() < config.stereo_fraction else 1
                if channels not in recipe.channel_counts:
                    channels = recipe.channel_counts[0]
            if recipe.video_codec:
                sizes = list(config.frame_sizes) + (list(config.odd_frame_sizes) if recipe.odd_sizes else [])
                width, height = sizes[int(plan_rng.integers(len(sizes)))]
            audio_factor, video_factor = split_class_name(labels[index])
            file_name = f"{_FILE_PREFIX_BY_KIND[modalities]}_{index:0{width_digits}d}.{recipe.container}"
            captions = make_captions(audio_factor, video_factor, _text_rng(entropy)) if index in captioned else ()
            plans.append(
                ClipPlan(
                    modalities=modalities,
                    index=index,
                    relative_path=f"{_DIRECTORY_BY_KIND[modalities]}/{file_name}",
                    label=labels[index],
                    audio_factor=audio_factor,
                    video_factor=video_factor,
                    split=splits[index],
                    recipe=recipe,
                    sample_rate=sample_rate,
                    channels=channels,
                    width=width,
                    height=height,
                    entropy=entropy,
                    captions=captions,
                    scene_tint=SCENE_TINTS[audio_factor] if index in in_scene and recipe.video_codec else None,
                )
            )
    return plans


def stratified_splits(labels: Sequence[str], fractions: Sequence[float], rng: np.random.Generator) -> list[str]:
    """Assign train/val/test so that every class is split in the same proportions.

    Items are dealt class by class in rounds (one item of every class per round, class order
    shuffled each round) and the dealt sequence is cut at the split fractions. With n items
    per class and n * fraction whole, each class gets exactly n * fraction; otherwise the
    remainders are spread over random classes rather than always the same ones.
    """
    by_class: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    queues = []
    for label in sorted(by_class):
        items = list(by_class[label])
        rng.shuffle(items)
        queues.append(items)
    dealt: list[int] = []
    for round_number in range(max((len(q) for q in queues), default=0)):
        for class_position in rng.permutation(len(queues)):
            queue = queues[class_position]
            if round_number < len(queue):
                dealt.append(queue[round_number])
    boundaries = np.cumsum(fractions) * len(dealt)
    splits = [""] * len(labels)
    for position, index in enumerate(dealt):
        # Centre of the position decides, so 70/15/15 of 20 gives exactly 14/3/3.
        split_number = int(np.searchsorted(boundaries, position + 0.5, side="right"))
        splits[index] = SPLITS[min(split_number, len(SPLITS) - 1)]
    return splits


# --------------------------------------------------------------------------- rendering: sound


def _gate(n_samples: int, sample_rate: int, start: float, stop: float, ramp_seconds: float = 0.015) -> np.ndarray:
    """1 between start and stop seconds, with raised-cosine ramps (no clicks at the edges)."""
    t = np.arange(n_samples) / sample_rate
    rise = np.clip((t - start) / ramp_seconds, 0.0, 1.0)
    fall = np.clip((stop - t) / ramp_seconds, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))


def render_audio(factor: str, seconds: float, sample_rate: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """One clip of `factor`, shape (channels, samples), float32 in [-1, 1]."""
    n = max(1, round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    jitter = rng.uniform(0.94, 1.06)  # pitch / rate jitter, small enough to keep factors apart
    if factor == "lowtone":
        f0 = 260.0 * jitter
        vibrato = 1.0 + 0.01 * np.sin(2 * np.pi * rng.uniform(3, 6) * t)
        phase = 2 * np.pi * np.cumsum(f0 * vibrato) / sample_rate
        signal = np.sin(phase) + 0.4 * np.sin(2 * phase + rng.uniform(0, 2 * np.pi)) + 0.15 * np.sin(3 * phase)
    elif factor == "hightone":
        f0 = 1900.0 * jitter
        phase = 2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi)
        signal = np.sin(phase) + 0.15 * np.sin(2 * phase)
    elif factor == "bursts":
        # Decaying white-noise clicks at a steady rate with a little timing jitter.
        period = 1.0 / rng.uniform(4.0, 7.0)
        burst_seconds = rng.uniform(0.035, 0.07)
        signal = np.zeros(n)
        onset = rng.uniform(0, period)
        while onset < seconds:
            start = int((onset + rng.uniform(-0.01, 0.01)) * sample_rate)
            length = int(burst_seconds * sample_rate)
            lo, hi = max(0, start), min(n, start + length)
            if hi > lo:
                decay = np.exp(-np.arange(lo - start, hi - start) / (0.4 * length))
                # Uniform rather than Gaussian noise: a low crest factor keeps the clicks loud
                # after the peak normalisation below.
                signal[lo:hi] = rng.uniform(-1.0, 1.0, hi - lo) * decay
            onset += period
    elif factor == "chirp":
        # Exponential sweeps repeating every `period`, so any 1 s window still rises.
        period = rng.uniform(0.35, 0.6)
        low, high = 400.0 * jitter, 3200.0 * jitter
        position = (t / period) % 1.0
        frequency = low * (high / low) ** position
        signal = np.sin(2 * np.pi * np.cumsum(frequency) / sample_rate)
    else:
        raise ValueError(f"unknown audio factor {factor!r}; expected one of {AUDIO_FACTORS}")

    onset = rng.uniform(0.0, 0.2 * seconds)
    offset = seconds - rng.uniform(0.0, 0.1 * seconds)
    signal = signal / max(1e-9, np.max(np.abs(signal))) * rng.uniform(0.2, 0.6) * _gate(n, sample_rate, onset, offset)
    noise_level = rng.uniform(0.003, 0.03)
    balance = rng.uniform(-0.2, 0.2) if channels == 2 else 0.0
    gains = [1.0 + balance, 1.0 - balance][:channels]
    # Each channel gets its own background noise, as two microphones would.
    out = np.stack([gain * signal + noise_level * rng.standard_normal(n) for gain in gains])
    return np.clip(out, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- rendering: picture

# Saturated, well-separated hues against a near-grey background.
_SHAPE_COLOURS = {"red_disc": (215, 35, 35), "green_square": (40, 190, 60), "blue_triangle": (45, 75, 225)}
# Background tints (RGB offsets on the grey) of each sound's scene (SynthConfig.scene_coupling):
# about twice the random tint's +-15, well away from the saturated shape colours.
SCENE_TINTS: Mapping[str, tuple[float, float, float]] = MappingProxyType(
    {"lowtone": (32.0, 8.0, -30.0), "hightone": (-28.0, 4.0, 34.0), "bursts": (-22.0, 30.0, -18.0), "chirp": (30.0, -26.0, 28.0)}
)


def _shape_signed_distance(factor: str, x: np.ndarray, y: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """Signed distance in pixels (negative inside) for shapes of equal area pi * radius**2."""
    if factor == "red_disc":
        return np.sqrt(x * x + y * y) - radius
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    u, v = cos_a * x + sin_a * y, -sin_a * x + cos_a * y
    if factor == "green_square":
        half_side = radius * math.sqrt(math.pi) / 2
        return np.maximum(np.abs(u), np.abs(v)) - half_side
    if factor == "blue_triangle":
        inradius = radius * math.sqrt(math.pi / (3 * math.sqrt(3)))
        # Equilateral triangle: inside when the projection on each of the three edge normals
        # (120 degrees apart) is below the inradius.
        normals = [(math.cos(a), math.sin(a)) for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)]
        return np.max([nx * u + ny * v for nx, ny in normals], axis=0) - inradius
    raise ValueError(f"unknown video factor {factor!r}; expected one of {VIDEO_FACTORS}")


def render_video(
    factor: str, seconds: float, fps: int, width: int, height: int, rng: np.random.Generator,
    scene_tint: Sequence[float] | None = None,
) -> np.ndarray:
    """One clip of `factor`, shape (frames, height, width, 3), uint8 RGB; `scene_tint` replaces
    the background's random tint (drawn all the same, so the rest of the clip does not change)."""
    n_frames = max(1, round(seconds * fps))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)

    # Background: grey with a faint tint, a linear gradient and static texture.
    grey = rng.uniform(55, 170)
    tint = rng.uniform(-15, 15, size=3)
    if scene_tint is not None:
        tint = np.asarray(scene_tint, dtype=np.float64)
    gradient_angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(gradient_angle) * (xs / width - 0.5) + np.sin(gradient_angle) * (ys / height - 0.5)) * rng.uniform(0, 50)
    texture = rng.normal(0.0, rng.uniform(4, 14), size=(height, width, 3))
    background = grey + tint + ramp[..., None] + texture

    colour = np.clip(np.array(_SHAPE_COLOURS[factor]) + rng.uniform(-25, 25, size=3), 0, 255)
    short_side = min(width, height)
    radius = rng.uniform(0.14, 0.22) * short_side
    # The shape moves inside the centred square of the frame: models centre-crop to a square,
    # and a shape outside the crop would make the label invisible. The margin keeps it whole
    # (the triangle's corners reach 1.56 radii, so they may be clipped a little).
    margin = radius * 1.4
    low = np.array([(width - short_side) / 2 + margin, (height - short_side) / 2 + margin])
    high = np.array([(width + short_side) / 2 - margin, (height + short_side) / 2 - margin])
    start, stop = rng.uniform(low, high), rng.uniform(low, high)
    wobble_amplitude = rng.uniform(0, 0.08) * short_side
    wobble_cycles = rng.uniform(0.5, 1.5)
    wobble_phase = rng.uniform(0, 2 * np.pi)
    angle0 = rng.uniform(0, 2 * np.pi)
    spin = rng.uniform(-1.5, 1.5)  # rad/s
    brightness_flicker = rng.normal(0, 2.0, size=n_frames)

    direction = stop - start
    normal = np.array([-direction[1], direction[0]]) / max(1e-6, float(np.linalg.norm(direction)))
    frames = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    for i in range(n_frames):
        progress = i / max(1, n_frames - 1)
        centre = start + progress * direction
        centre = centre + normal * wobble_amplitude * math.sin(2 * math.pi * wobble_cycles * progress + wobble_phase)
        centre = np.clip(centre, low, high)
        distance = _shape_signed_distance(factor, xs - centre[0], ys - centre[1], radius, angle0 + spin * i / fps)
        coverage = np.clip(0.5 - distance, 0.0, 1.0)[..., None]  # one-pixel anti-aliased edge
        frame = (background + brightness_flicker[i]) * (1.0 - coverage) + colour * coverage
        frames[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


# --------------------------------------------------------------------------- encoding


def _add_video_stream(container: av.container.OutputContainer, recipe: Recipe, plan: ClipPlan, fps: int) -> av.VideoStream:
    stream = container.add_stream(recipe.video_codec, rate=fps, options=dict(recipe.video_options))
    stream.width, stream.height = plan.width, plan.height
    stream.pix_fmt = "yuvj420p" if recipe.video_codec == "mjpeg" else "yuv420p"
    stream.codec_context.gop_size = fps  # a keyframe every second keeps seeking cheap
    stream.codec_context.thread_count = 1  # single-threaded encoders are deterministic
    stream.codec_context.flags |= Flags.bitexact
    return stream


def _add_audio_stream(container: av.container.OutputContainer, recipe: Recipe, plan: ClipPlan) -> av.AudioStream:
    stream = container.add_stream(recipe.audio_codec, rate=plan.sample_rate, options=dict(recipe.audio_options))
    stream.layout = "stereo" if plan.channels == 2 else "mono"
    if recipe.audio_bit_rate:
        stream.bit_rate = recipe.audio_bit_rate * (plan.channels or 1)
    stream.codec_context.thread_count = 1
    stream.codec_context.flags |= Flags.bitexact
    return stream


def _audio_frame(samples: np.ndarray, first_sample: int, sample_rate: int) -> av.AudioFrame:
    layout = "stereo" if samples.shape[0] == 2 else "mono"
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
    frame.sample_rate = sample_rate
    frame.pts = first_sample
    frame.time_base = Fraction(1, sample_rate)
    return frame


def write_clip(path: Path, plan: ClipPlan, audio: np.ndarray | None, video: np.ndarray | None, fps: int) -> None:
    """Encode and mux one file, interleaving audio and video in time order."""
    recipe = plan.recipe
    # +bitexact: no encoder version strings, and fixed (not random) Matroska/Ogg UIDs.
    with av.open(str(path), "w", format=recipe.muxer, container_options={"fflags": "+bitexact"}) as container:
        video_stream = _add_video_stream(container, recipe, plan, fps) if video is not None else None
        audio_stream = _add_audio_stream(container, recipe, plan) if audio is not None else None

        def encode_audio_until(sample: int, written: int) -> int:
            if audio_stream is None or sample <= written:
                return written
            container.mux(audio_stream.encode(_audio_frame(audio[:, written:sample], written, plan.sample_rate)))
            return sample

        audio_written = 0
        total_samples = 0 if audio is None else audio.shape[1]
        if video_stream is not None:
            for i, rgb in enumerate(video):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                container.mux(video_stream.encode(frame))
                if audio is not None:
                    until = total_samples if i == len(video) - 1 else round((i + 1) * plan.sample_rate / fps)
                    audio_written = encode_audio_until(min(until, total_samples), audio_written)
            container.mux(video_stream.encode(None))
        if audio_stream is not None:
            chunk = max(1, plan.sample_rate // 10)
            while audio_written < total_samples:
                audio_written = encode_audio_until(min(total_samples, audio_written + chunk), audio_written)
            container.mux(audio_stream.encode(None))


def render_and_write(plan: ClipPlan, out_dir: Path, config: SynthConfig) -> None:
    """Render one planned clip and write it under out_dir (a top-level function so worker processes can run it)."""
    _, audio_rng, video_rng = _clip_rngs(plan.entropy)
    audio = (
        render_audio(plan.audio_factor, config.clip_seconds, plan.sample_rate, plan.channels, audio_rng)
        if plan.has_audio
        else None
    )
    video = (
        render_video(plan.video_factor, config.clip_seconds, config.fps, plan.width, plan.height, video_rng, plan.scene_tint)
        if plan.has_video
        else None
    )
    path = out_dir / plan.relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_clip(path, plan, audio, video, config.fps)


def _render_and_write_job(job: tuple[ClipPlan, Path, SynthConfig]) -> str:
    plan, out_dir, config = job
    render_and_write(plan, out_dir, config)
    return plan.relative_path


# --------------------------------------------------------------------------- the dataset


def generate_dataset(
    out_dir: Path | str,
    *,
    clips: int,
    seed: int = 0,
    config: SynthConfig | None = None,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write the dataset into out_dir and return the path of its manifest.csv.

    out_dir is created if needed; files of the same name are overwritten (others are left
    alone). The manifest is written last, so an interrupted run leaves no manifest behind.
    workers > 1 encodes in that many processes with byte-identical results.
    """
    out_dir = Path(out_dir)
    config = config or SynthConfig()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    plans = plan_dataset(clips, seed, config)
    out_dir.mkdir(parents=True, exist_ok=True)

    jobs = [(plan, out_dir, config) for plan in plans]
    with tqdm(total=len(jobs), desc="synth", unit="clip", disable=not progress) as bar:
        if workers == 1:
            for job in jobs:
                _render_and_write_job(job)
                bar.update()
        else:
            # "spawn": the caller may be multi-threaded (servers, test runners), where fork is unsafe.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                for _ in pool.map(_render_and_write_job, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers)))):
                    bar.update()

    manifest_path = out_dir / "manifest.csv"
    with manifest_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(plan.manifest_row() for plan in plans)
    (out_dir / "classes.txt").write_text("".join(f"{name}\n" for name in CLASS_NAMES), encoding="utf-8")
    description = describe_dataset(plans, clips=clips, seed=seed, config=config)
    (out_dir / "dataset.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    (out_dir / "README.md").write_text(_readme(description), encoding="utf-8")
    return manifest_path


def describe_dataset(plans: Sequence[ClipPlan], *, clips: int, seed: int, config: SynthConfig) -> dict:
    """What dataset.json holds: enough to regenerate the data and to judge a model trained on it."""
    counts: dict[str, dict[str, int]] = {m: {s: 0 for s in SPLITS} for m in MODALITIES}
    captioned: dict[str, int] = {m: 0 for m in MODALITIES}
    in_scene: dict[str, int] = {m: 0 for m in MODALITIES}
    for plan in plans:
        counts[plan.modalities][plan.split] += 1
        captioned[plan.modalities] += bool(plan.captions)
        in_scene[plan.modalities] += plan.scene_tint is not None
    containers = sorted({f"{p.recipe.container} ({p.recipe.codecs})" for p in plans})
    return {
        "generator": "training.data.synth",
        "seed": seed,
        "clips": clips,
        "config": asdict(config),
        "classes": list(CLASS_NAMES),
        "audio_factors": list(AUDIO_FACTORS),
        "video_factors": list(VIDEO_FACTORS),
        "accuracy_ceilings_top1": dict(ACCURACY_CEILINGS),
        "chance_top1": CHANCE_ACCURACY,
        "files": counts,
        "files_with_captions": captioned,
        "captions_per_clip": CAPTIONS_PER_CLIP,
        # Files whose scene tint shows their sound (scene_coupling): where the ceilings do not hold.
        "files_with_scene": in_scene,
        "formats": containers,
        # Bytes depend on the encoder builds; content does not.
        "pyav": av.__version__,
        "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
    }


def _readme(description: dict) -> str:
    config = description["config"]
    ceilings = description["accuracy_ceilings_top1"]
    lines = [
        "# Synthetic audio-visual dataset",
        "",
        f"Generated by `{description['generator']}` with seed {description['seed']} "
        f"({description['clips']} audio+video clips of {config['clip_seconds']} s).",
        "Regenerate with:",
        "",
        "```",
        f"avserve data synth --out <dir> --clips {description['clips']} --seed {description['seed']} "
        f"--clip-seconds {config['clip_seconds']} --unimodal-fraction {config['unimodal_fraction']} "
        f"--caption-fraction {config['caption_fraction']} --scene-coupling {config['scene_coupling']}",
        "```",
        "",
        "Each class is an audio factor x a video factor "
        f"({len(description['audio_factors'])} x {len(description['video_factors'])} = {len(description['classes'])} classes, balanced):",
        "",
        f"- audio factors: {', '.join(description['audio_factors'])}",
        f"- video factors: {', '.join(description['video_factors'])}",
        "",
        "Best possible top-1 accuracy by what a model sees:",
        "",
        "| modalities | ceiling |",
        "|---|---|",
        *(f"| {m} | {ceilings[m]:.1%} |" for m in MODALITIES),
        f"| (chance) | {description['chance_top1']:.1%} |",
        "",
        "Files per split:",
        "",
        "| modalities | " + " | ".join(SPLITS) + " |",
        "|---|" + "---|" * len(SPLITS),
        *(f"| {m} | " + " | ".join(str(description["files"][m][s]) for s in SPLITS) + " |" for m in MODALITIES),
        "",
        f"Formats: {', '.join(description['formats'])}.",
        "",
        f"Captions (text for pretraining, the `captions` column, {description['captions_per_clip']} per file "
        "separated by \"|\"): "
        + ", ".join(f"{m} {description['files_with_captions'][m]}" for m in MODALITIES)
        + " files have them; the others have none.",
        "",
        "Files: `manifest.csv` (one row per file), `classes.txt` (class index order), `dataset.json`.",
        "See docs/synthetic-data.md in the avserve repository for the design.",
        "",
    ]
    return "\n".join(lines)
