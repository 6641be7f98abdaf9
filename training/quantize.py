"""INT8 graphs for CPU serving (`avserve export --quantize int8`) and their parity with fp32.

The exporter writes the fp32 graph, checks it against torch, then `quantize_graph` rewrites it
with onnxruntime's *dynamic* quantization of the MatMul nodes: weights become int8
(per output channel, stored in the graph), activations are quantized to uint8 per call from their
own range (DynamicQuantizeLinear), and onnxruntime fuses each pair into an integer matmul
(DynamicQuantizeMatMul / MatMulInteger). Everything else stays fp32: the log-mel front end,
the patch-embedding convolutions, LayerNorm, softmax, GELU.

Why dynamic and not static (QDQ with calibration clips): in a ViT almost all of the compute is
the MatMuls (projections, MLPs, attention), which dynamic quantization covers; per-call
activation ranges cannot be wrong for inputs unlike the calibration set; and it needs no data,
so any export can be quantized. Static quantization would also quantize the activations
between ops (less converting) but needs representative calibration clips and was not measured
(docs/benchmarks.md, "INT8").

Weights per output channel with a 7-bit range (`per_channel`, `reduce_range`): x86 CPUs
without VNNI (AVX2, AVX-512F) multiply uint8 x int8 with VPMADDUBSW, whose 16-bit sums of two
products saturate for large weights and activations; 7-bit weights cannot saturate, and the
per-channel scales win back the bit. Measured on mbt_tiny (random weights, logits scaled to be
decisive, on this AVX2 CPU), mean |logit error| / logit spread: 3.6% per channel + 7-bit,
3.5% per tensor 8-bit (can saturate on other weights), 5.5% per tensor 7-bit, 12.5% per
channel 8-bit (saturating). The exported graph must be right on whichever CPU serves it.

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
from avserve.views import softmax

QUANTIZE_CHOICES: tuple[str, ...] = ("none", "int8")
# Every transformer projection, MLP and attention product is a MatMul; the dynamic quantizer
# first rewrites each Gemm (the classifier heads) as MatMul + Add, so those are covered too.
QUANTIZED_OPS: tuple[str, ...] = ("MatMul",)
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
    """Write the dynamically quantized (int8 MatMul) version of an ONNX graph."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32_path))
    _read_weights_directly(graph)
    _unshare_gemm_weights(graph)
    # quantize_dynamic logs a root-logger warning recommending quant_pre_process (symbolic shape
    # inference + graph optimisation) on every call; the session's own optimiser does the fusions
    # that matter for dynamic quantization, so the advice does not apply here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            model_input=graph,
            model_output=str(int8_path),
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True,
            reduce_range=True,
            weight_type=QuantType.QInt8,
        )
    finally:
        root.setLevel(level)


def _read_weights_directly(model: Any) -> None:
    """Feed each node the initializer an Identity node only forwards. The TorchScript exporter
    routes a weight used in several places (Zorro's per-stream projections share theirs) through
    Identity nodes; the quantizer only quantizes a MatMul whose weight is an initializer, so
    without this most of Zorro's MatMuls would stay fp32."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    graph_outputs = {output.name for output in model.graph.output}
    forwarded = {
        node.output[0]: node.input[0]
        for node in model.graph.node
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in graph_outputs
    }
    if not forwarded:
        return
    kept = [node for node in model.graph.node if not (node.op_type == "Identity" and node.output[0] in forwarded)]
    for node in kept:
        for index, name in enumerate(node.input):
            if name in forwarded:
                node.input[index] = forwarded[name]
    model.graph.ClearField("node")
    model.graph.node.extend(kept)


def _unshare_gemm_weights(model: Any) -> None:
    """Give every transposed-weight Gemm its own copy of its weight. The quantizer's Gemm ->
    MatMul rewrite transposes the weight initializer in place, once per Gemm, so a weight two
    Gemms share (MBT applies one classifier to both CLS tokens) ends up transposed twice and
    the graph fails to load ("Gemm_Add: Incompatible dimensions")."""
    from onnx import numpy_helper

    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for index, node in enumerate(model.graph.node):
        transposed = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        if node.op_type != "Gemm" or not transposed or len(node.input) < 2:
            continue
        weight = node.input[1]
        if weight in initializers and uses[weight] > 1:
            copy = numpy_helper.from_array(numpy_helper.to_array(initializers[weight]), f"{weight}.gemm{index}")
            model.graph.initializer.append(copy)
            node.input[1] = copy.name
            uses[weight] -= 1


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
        selected.records[: limit * 4],  # enough candidates after skipping the clips that lack an input
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
