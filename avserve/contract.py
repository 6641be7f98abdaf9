"""The names training and serving agree on, defined once.

Training (`training/`, torch) and serving (`avserve/`, no torch) meet in one place: the Triton
model repository (shared/DESIGN.md). This module is that contract's vocabulary: modality and
tensor names, output names, file names and the `config.pbtxt` parameter keys the exporter
writes and the gateway reads. It imports nothing but the standard library, so the exporter,
the gateway, the repository reader and the Triton Python-backend model can all import it.

    from avserve.contract import AUDIO, VIDEO, Param, head_output
    head_output("audio")          # "head_audio": the exported output of Zorro's audio head
    Param.SAMPLE_RATE             # "sample_rate": a config.pbtxt parameter key
"""

from __future__ import annotations

from typing import Final

# ---- modalities -----------------------------------------------------------------------------
# A modality name is also the name of the graph input that carries it:
#   audio  float32 [batch, clip_samples]                   mono PCM in [-1, 1] at sample_rate
#   video  uint8   [batch, num_frames, image_size, image_size, 3]   RGB frames
AUDIO: Final = "audio"
VIDEO: Final = "video"
MODALITIES: Final = (AUDIO, VIDEO)  # the fixed order of graph inputs
AUDIO_VIDEO: Final = frozenset({AUDIO, VIDEO})
AUDIO_ONLY: Final = frozenset({AUDIO})
VIDEO_ONLY: Final = frozenset({VIDEO})

# One exported model per servable input set, named <family>_<suffix>. The gateway routes by
# the `modalities` parameter; the suffixes are for people reading the repository.
ROUTE_SUFFIXES: Final = {AUDIO_VIDEO: "av", AUDIO_ONLY: "audio", VIDEO_ONLY: "video"}


def modalities_parameter(modalities: frozenset[str] | set[str]) -> str:
    """The `modalities` parameter value of an input set: "audio+video", "audio" or "video"."""
    return "+".join(m for m in MODALITIES if m in modalities)


# ---- outputs --------------------------------------------------------------------------------
ANSWER_OUTPUT: Final = "logits"  # the mean of the heads' logits: what /classify answers with
HEAD_OUTPUT_PREFIX: Final = "head_"  # each head's own logits, e.g. head_audio


def head_output(head: str) -> str:
    return HEAD_OUTPUT_PREFIX + head


# ---- files ----------------------------------------------------------------------------------
CONFIG_FILE: Final = "config.pbtxt"
LABELS_FILE: Final = "labels.txt"
ONNX_MODEL_FILE: Final = "model.onnx"
MODEL_VERSION: Final = "1"  # the exporter writes version 1; Triton serves the newest version
# The local Python-backend Triton (avserve.triton) finds the ONNX file through this parameter.
ONNX_FILENAME_PARAMETER: Final = "onnx_model_filename"
# An export swapping a family's models in writes <repository>/.export-<family>.json first and
# removes it when every model is in place (training/export.py): while it exists the family is
# half old, half new, and readers leave the models it names alone.
EXPORT_JOURNAL_PREFIX: Final = ".export-"
EXPORT_JOURNAL_SUFFIX: Final = ".json"


# ---- config.pbtxt parameters ----------------------------------------------------------------
class Param:
    """Keys of the string `parameters` in config.pbtxt (written by training/export.py, decoded
    by avserve/repository/spec.py)."""

    FAMILY: Final = "family"  # models of one trained run share it: <family>_av, _audio, _video
    ARCHITECTURE: Final = "architecture"  # paper family: zorro, mbt, ...
    MODALITIES: Final = "modalities"  # modalities_parameter() of the inputs
    SAMPLE_RATE: Final = "sample_rate"  # Hz of the audio input
    CLIP_SECONDS: Final = "clip_seconds"  # seconds one example spans
    NUM_FRAMES: Final = "num_frames"  # frames of the video input
    IMAGE_SIZE: Final = "image_size"  # frames are image_size x image_size
    ANSWER_OUTPUT: Final = "answer_output"  # which output /classify answers with
    HEADS: Final = "heads"  # comma-separated head names; each has output head_<name>
    MISSING_MODALITY: Final = "missing_modality"  # one of MISSING_MODALITY_POLICIES
    UNIMODAL: Final = "unimodal"  # one of UNIMODAL_KINDS (unimodal graphs only)
    MODALITY_DROPOUT: Final = "modality_dropout"  # fraction of training clips made unimodal
    PRETRAINED: Final = "pretrained"  # "<model> (<objective>)" of the run the trained one was initialised from
    PRECISION: Final = "precision"  # one of PRECISIONS; absent = fp32 as exported


# What the gateway does with an upload lacking one of the family's modalities.
MISSING_MODALITY_POLICIES: Final = frozenset({"route", "zero_fill", "reject"})
# What a unimodal graph computes:
#   "head"    exactly the full model's head for that modality (Zorro: modality-pure heads);
#   "stream"  the model run on that modality's stream alone, a different function from the
#             audio+video answer, as good as the model's training on unimodal clips (MBT).
UNIMODAL_KINDS: Final = frozenset({"head", "stream"})
# Numeric precision of an exported graph: "int8" = onnxruntime dynamic quantization of its
# MatMul nodes (training/quantize.py); "fp32" = as traced.
PRECISIONS: Final = frozenset({"fp32", "int8"})
