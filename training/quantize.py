"""INT8 graphs for CPU serving (`avserve export --quantize int8`) and their parity with fp32.

The exporter writes the fp32 graph, checks it against torch, then `quantize_graph` rewrites it
with onnxruntime's *dynamic* quantization of the MatMul and Gemm nodes: weights become int8
(per tensor, stored in the graph), activations are quantized to uint8 per call from their
own range (DynamicQuantizeLinear), and onnxruntime fuses each pair into an integer matmul
(DynamicQuantizeMatMul / MatMulInteger). Everything else stays fp32: the log-mel front end,
the patch-embedding convolutions, LayerNorm, softmax, GELU.

Why dynamic and not static (QDQ with calibration clips): in a ViT almost all of the compute is
the MatMuls (projections, MLPs, attention), which dynamic quantization covers; per-call
activation ranges cannot be wrong for inputs unlike the calibration set; and it needs no data,
so any export can be quantized. Static quantization would also quantize the activations
between ops (less converting) but needs representative calibration clips and was not measured
(docs/benchmarks.md, "INT8").

`reduce_range` (7-bit weights): x86 CPUs without VNNI (AVX2, AVX-512F) multiply uint8 x int8
with VPMADDUBSW, whose 16-bit sums of two products saturate for large weights and
activations; 7-bit weights cannot saturate. It costs a little precision everywhere and no time;
the exported graph must be right on whichever CPU serves it, so it is on.

Parity (`int8_parity`) compares the int8 graph with the fp32 graph it came from on the same
inputs: top-1 agreement of the answer output and the largest |difference| of its softmax
probabilities, on a dataset split's clips (decoded as in training) when one is given, else on
generated inputs (uniform noise: weaker evidence, labelled "generated" wherever it is shown).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avserve.contract import AUDIO, VIDEO

QUANTIZE_CHOICES: tuple[str, ...] = ("none", "int8")
QUANTIZED_OPS: tuple[str, ...] = ("MatMul", "Gemm")
# Written into each int8 model's directory (Triton and the gateway ignore files they do not know).
QUANTIZATION_FILE = "quantization.json"
PARITY_CLIPS = 64  # clips a parity check runs through both graphs (a dataset may have fewer)
GENERATED = "generated"


@dataclass(frozen=True)
class QuantParity:
    """int8 vs fp32 on the same inputs (the answer output; probabilities = softmax of logits)."""

    inputs: str  # GENERATED, or "<dataset> split <name>"
    clips: int
    top1_agreement: float  # fraction of clips whose argmax is the same
    max_prob_diff: float  # largest |p_int8 - p_fp32| over clips and classes
    top1_fp32: float | None = None  # accuracy against the labels, when the inputs have them
    top1_int8: float | None = None

    def summary(self) -> str:
        accuracy = ""
        if self.top1_fp32 is not None and self.top1_int8 is not None:
            accuracy = f", accuracy fp32 {self.top1_fp32:.3f} int8 {self.top1_int8:.3f}"
        return (
            f"int8 vs fp32 on {self.clips} {self.inputs} clips: top-1 agreement {self.top1_agreement:.3f}, "
            f"max |prob diff| {self.max_prob_diff:.3g}{accuracy}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quantize_graph(fp32_path: Path, int8_path: Path) -> None:
    """Write the dynamically quantized (int8 MatMul/Gemm) version of an ONNX graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs a root-logger warning recommending quant_pre_process (symbolic shape
    # inference + graph optimisation) on every call; the session's own optimiser does the fusions
    # that matter for dynamic quantization, so the advice does not apply here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            model_input=str(fp32_path),
            model_output=str(int8_path),
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=False,  # per-tensor: measured as fast or faster here, and 6x quicker to quantize
            reduce_range=True,
            weight_type=QuantType.QInt8,
        )
    finally:
        root.setLevel(level)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def int8_parity(
    fp32_path: Path,
    int8_path: Path,
    batches: Iterable[tuple[dict[str, np.ndarray], np.ndarray | None]],
    inputs: str,
    output: str = "logits",
) -> QuantParity:
    """Run both graphs over `batches` of (feeds, class targets or None) and compare `output`."""
    import onnxruntime as ort

    fp32 = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    clips, agree, worst = 0, 0, 0.0
    correct = {"fp32": 0, "int8": 0}
    labelled = True
    for feeds, targets in batches:
        want = fp32.run([output], feeds)[0]
        got = int8.run([output], feeds)[0]
        if not np.isfinite(got).all():
            worst = float("inf")
        else:
            worst = max(worst, float(np.abs(softmax(want) - softmax(got)).max()))
        agree += int((want.argmax(-1) == got.argmax(-1)).sum())
        clips += len(want)
        if targets is None:
            labelled = False
        else:
            correct["fp32"] += int((want.argmax(-1) == targets).sum())
            correct["int8"] += int((got.argmax(-1) == targets).sum())
    if not clips:
        raise ValueError(f"no {inputs} clips to compare int8 with fp32 on")
    accuracy = {k: v / clips for k, v in correct.items()} if labelled else {"fp32": None, "int8": None}
    return QuantParity(inputs, clips, agree / clips, worst, accuracy["fp32"], accuracy["int8"])


def generated_batches(model: Any, input_names: Sequence[str], clips: int = 16, batch: int = 8, seed: int = 7) -> Iterator[tuple[dict[str, np.ndarray], None]]:
    """Noise inputs of the served shapes (training.export.example_inputs), unlabelled."""
    from training.export import example_inputs

    for start in range(0, clips, batch):
        tensors = example_inputs(model, input_names, batch=min(batch, clips - start), seed=seed + start)
        yield {name: tensor.numpy() for name, tensor in zip(input_names, tensors)}, None


def dataset_batches(
    model: Any,
    input_names: Sequence[str],
    data: str | Path,
    split: str = "test",
    limit: int = PARITY_CLIPS,
    batch: int = 8,
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
    """A split's clips that have every input of the graph, decoded and preprocessed as the
    trainer's evaluation decodes them (training.data.dataset), with their single-label targets.
    Raises training.data.records.DatasetError for a missing or empty split."""
    import torch

    from training.data.dataset import AVClipDataset, Preprocessing, collate
    from training.data.records import DatasetError, load_records

    records = load_records(data)
    selected = records.split(split)
    dataset = AVClipDataset(
        selected.records[: max(limit * 4, limit)],  # enough candidates after skipping clips without an input
        records.classes,
        records.multilabel,
        Preprocessing.from_config(model.config),
        train=False,
        modalities=[m for m in (AUDIO, VIDEO) if m in input_names],
        missing="skip",
    )
    if len(dataset) == 0:
        raise DatasetError(f"split {split!r} of {data} has no clip with the inputs {sorted(input_names)}")
    indices = list(range(min(limit, len(dataset))))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch, collate_fn=collate)
    for item in loader:
        targets = None if records.multilabel else item["target"].numpy()
        yield {name: item[name].numpy() for name in input_names}, targets


def parity_label(data: str | Path | None, split: str) -> str:
    return GENERATED if data is None else f"{data} split {split}"
