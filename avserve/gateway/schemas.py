"""Typed response bodies; FastAPI documents them in the OpenAPI schema."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    label: str
    score: float = Field(description="Softmax probability; over several windows, the softmax of their mean logits.")


class ServedModel(BaseModel):
    name: str = Field(description="The served model that answered, e.g. `zorro_tiny_audio`.")
    version: str | None = Field(description="Its version in the repository.")
    family: str
    backend: str = Field(description="`embedded` or `triton`.")
    unimodal: Literal["head", "stream"] | None = Field(
        None,
        description=(
            "For an audio-only or video-only model, how its answer relates to the audio+video model: "
            "`head` = exactly that model's head for this modality (Zorro); `stream` = the modality's own "
            "stream run alone, trained for via modality dropout (MBT). Null for audio+video models."
        ),
    )


class Modalities(BaseModel):
    present: list[str] = Field(description="Streams that decode in the upload.")
    used: list[str] = Field(description="Modalities the route feeds from the upload.")
    zero_filled: list[str] = Field(
        default_factory=list, description="Inputs the model needs but the upload lacks, sent as zeros."
    )
    degraded: bool = Field(False, description="True when an input was zero-filled: the answer is less reliable.")


class ScoredWindow(BaseModel):
    start: float = Field(description="Clip time (s) the window starts at.")
    duration: float


class Timings(BaseModel):
    upload: float
    probe: float
    decode: float
    inference: float
    total: float


_SKIPPED_PACKETS = (
    "Damaged packets of this stream that did not decode and were skipped, as FFmpeg's tools skip them "
    "(at most `AVSERVE_MAX_BAD_PACKETS` per decoded window, else the request fails with "
    "`too_many_bad_packets`): counted while decoding the scored windows, or, for a stream the route "
    "does not use, while probing. 0 for an undamaged stream."
)


class AudioSummary(BaseModel):
    codec: str
    sample_rate: int
    channels: int
    skipped_packets: int = Field(0, description=_SKIPPED_PACKETS)
    skipped_bytes: int = Field(0, description="Size of the skipped packets.")


class VideoSummary(BaseModel):
    codec: str
    width: int
    height: int
    fps: float | None
    skipped_packets: int = Field(0, description=_SKIPPED_PACKETS)
    skipped_bytes: int = Field(0, description="Size of the skipped packets.")
    sampling: Literal["exact", "fast"] | None = Field(
        None, description="How frames were chosen: `exact` (on screen at each sample time) or `fast` (nearest keyframe); "
        "null when the video was not decoded."
    )
    max_frame_offset_ms: float | None = Field(
        None, description="Largest distance between a sample time and the time its frame is shown from."
    )


class MediaSummary(BaseModel):
    container: str
    duration: float | None
    size_bytes: int
    audio: AudioSummary | None
    video: VideoSummary | None


class ClassifyResponse(BaseModel):
    request_id: str
    model: ServedModel
    modalities: Modalities
    predictions: list[Prediction] = Field(description="Top-k labels of the model's answer output, best first.")
    heads: dict[str, list[Prediction]] | None = Field(
        None,
        description=(
            "Top-k per output head, when the model has heads: the model's own head names "
            "(Zorro: audio, video, fusion, global on audio+video, one of audio/video on a unimodal model; MBT: cls)."
        ),
    )
    windows: list[ScoredWindow]
    media: MediaSummary
    timings_ms: Timings
    cache: Literal["hit", "miss", "bypass"] | None = Field(
        None,
        description=(
            "The response cache's part (also the `X-Cache` header): `hit` = answered from the cache, without "
            "decoding (timings: upload and total only); `miss` = computed and stored; `bypass` = computed, "
            "the client's `Cache-Control: no-cache`/`no-store` skipped the lookup. Null when the cache is off."
        ),
    )


class TensorInfo(BaseModel):
    name: str
    data_type: str
    dims: list[int] = Field(description="Without the batch dimension; -1 is variable.")


class BatchingInfo(BaseModel):
    max_rows: int = Field(description="Rows one run takes at most (1: every request runs alone).")
    reason: str = Field(description="Why, in words: the measured batch curve, or the setting that decided.")
    ms_per_clip: dict[int, float] = Field(
        description="Batch rows -> ms per clip, measured at start-up (empty: not measured)."
    )
    partner_wait_ms: float = Field(
        description=(
            "A request reaching an idle model is held for a partner at most this long, and only while "
            "arrivals are expected within it (0: never held)."
        )
    )


class ModelInfo(BaseModel):
    name: str
    family: str
    architecture: str
    versions: list[int]
    modalities: list[str]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    answer_output: str
    heads: list[str]
    num_labels: int
    missing_modality: str
    unimodal: Literal["head", "stream"] | None = Field(
        None,
        description=(
            "For an audio-only or video-only model, what its answer is. `head`: exactly the answer the "
            "family's audio+video model gives for that modality's head (e.g. Zorro's audio head), at a "
            "fraction of the compute. `stream`: the model run on that stream alone, a different answer "
            "from the audio+video one, as reliable as the model's training on single-modality clips "
            "(see `modality_dropout`; e.g. MBT). Null for audio+video models and when the repository "
            "does not say."
        ),
    )
    modality_dropout: float | None = Field(
        None,
        description=(
            "Fraction of audio+video training clips that had one modality dropped (e.g. 0.3), when the "
            "repository records it: a `stream` model trained this way was taught to answer single-modality "
            "clips. Null: not recorded (the training run used no modality dropout, or the export predates "
            "the parameter); its single-modality answers then rest only on whatever audio-only or "
            "video-only clips its training data held."
        ),
    )
    pretrained: str | None = Field(
        None,
        description=(
            "The pretraining the family's weights started from, as `<model> (<objective>)`, e.g. "
            "`avmae_tiny (masked)`: an MBT finetuned from an audio-visual masked autoencoder, whose "
            "unimodal graphs are its streams initialised from the pretrained encoder. Null: trained from "
            "scratch, or not recorded."
        ),
    )
    precision: Literal["fp32", "int8"] | None = Field(
        None,
        description=(
            "Numeric precision of the served graph. `int8`: its MatMul weights are int8 and their "
            "activations are quantized per call (onnxruntime dynamic quantization, `avserve export "
            "--quantize int8`): faster on CPU, answers within the parity the export reported. `fp32` or "
            "null: full precision (null when the repository does not say, as for every fp32 export)."
        ),
    )
    sample_rate: int | None
    clip_seconds: float | None
    num_frames: int | None
    image_size: int | None
    max_batch_size: int
    batching: BatchingInfo | None = Field(
        None, description="How the backend batches this model's requests; null when it does not say (Triton)."
    )


class ModelDetail(ModelInfo):
    labels: list[str]


class FamilyInfo(BaseModel):
    name: str
    routes: dict[str, str] = Field(description="Modality set (`audio+video`, `audio`, `video`) -> model name.")


class ModelsResponse(BaseModel):
    backend: str
    default_family: str | None
    families: list[FamilyInfo]
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    status: str
    backend: str
    models: list[str]
