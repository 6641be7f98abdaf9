"""A tiny model repository built without torch, and real local Triton servers to serve it.

The ONNX graphs are made with `onnx.helper` and the configs with `avserve.repository`'s own
writer, so the tests exercise the same contract the exporter will follow:

    tiny_audio  audio f32 [B,160]                     -> logits [B,3], head_audio [B,3]
    tiny_av     audio f32 [B,160] + video u8 [B,2,8,8,3] -> logits [B,3], head_audio, head_video
    tiny_lookup audio f32 [B,160] used as row indices -> logits [B,3] (fails on out-of-range values)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from avserve.repository import BatchingConfig, NewModelConfig, TensorConfig, new_model_config, write_model_config
from avserve.triton import LocalTriton

CLIP_SAMPLES = 160  # 0.01 s at 16 kHz: tiny, but the same shape rules as a real clip
NUM_FRAMES, IMAGE_SIZE = 2, 8
LABELS = ("dog", "piano", "rain")
LOOKUP_ROWS = 10
MAX_BATCH_SIZE = 16
# Long enough on 2 busy cores for 32 concurrent requests to meet in one batch.
QUEUE_DELAY_US = 20_000


def _initializer(name: str, shape: tuple[int, ...], seed: int) -> onnx.TensorProto:
    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(values, name)


def audio_graph() -> onnx.ModelProto:
    nodes = [
        helper.make_node("MatMul", ["audio", "w_audio"], ["audio_scores"]),
        helper.make_node("Add", ["audio_scores", "b_audio"], ["logits"]),
        helper.make_node("Identity", ["logits"], ["head_audio"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_audio",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["B", CLIP_SAMPLES])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", len(LABELS)]) for name in ("logits", "head_audio")],
        [_initializer("w_audio", (CLIP_SAMPLES, len(LABELS)), 1), _initializer("b_audio", (len(LABELS),), 2)],
    )
    return _model(graph)


def audio_video_graph() -> onnx.ModelProto:
    nodes = [
        helper.make_node("MatMul", ["audio", "w_audio"], ["head_audio"]),
        helper.make_node("Cast", ["video"], ["video_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["video_f", "scale"], ["video_unit"]),
        # Mean over frames, height and width: one colour vector per clip.
        helper.make_node("ReduceMean", ["video_unit"], ["colour"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("MatMul", ["colour", "w_video"], ["head_video"]),
        helper.make_node("Add", ["head_audio", "head_video"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_av",
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["B", CLIP_SAMPLES]),
            helper.make_tensor_value_info("video", TensorProto.UINT8, ["B", NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3]),
        ],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", len(LABELS)])
            for name in ("logits", "head_audio", "head_video")
        ],
        [
            _initializer("w_audio", (CLIP_SAMPLES, len(LABELS)), 3),
            _initializer("w_video", (3, len(LABELS)), 4),
            numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
        ],
    )
    return _model(graph)


def lookup_graph() -> onnx.ModelProto:
    """audio values are used as row indices into a table: an out-of-range value makes
    onnxruntime fail at run time, after Triton's own input checks have passed."""
    nodes = [
        helper.make_node("Cast", ["audio"], ["rows"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "rows"], ["picked"], axis=0),  # [B, 160, 3]
        helper.make_node("ReduceMean", ["picked"], ["logits"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_lookup",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["B", CLIP_SAMPLES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", len(LABELS)])],
        [_initializer("table", (LOOKUP_ROWS, len(LABELS)), 5)],
    )
    return _model(graph)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by any onnxruntime the NGC containers ship
    onnx.checker.check_model(model)
    return model


AUDIO = TensorConfig("audio", "TYPE_FP32", (CLIP_SAMPLES,))
VIDEO = TensorConfig("video", "TYPE_UINT8", (NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3))
LOGITS = TensorConfig("logits", "TYPE_FP32", (len(LABELS),), label_filename="labels.txt")


def _head(name: str) -> TensorConfig:
    return TensorConfig(f"head_{name}", "TYPE_FP32", (len(LABELS),))


def write_model(
    repo: Path,
    name: str,
    graph: onnx.ModelProto,
    inputs: tuple[TensorConfig, ...],
    heads: tuple[str, ...],
    modalities: str,
    family: str = "tiny",
) -> Path:
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True)
    onnx.save(graph, model_dir / "1" / "model.onnx")
    (model_dir / "labels.txt").write_text("\n".join(LABELS) + "\n")
    config = new_model_config(
        NewModelConfig(
            name=name,
            inputs=inputs,
            outputs=(LOGITS, *(_head(h) for h in heads)),
            max_batch_size=MAX_BATCH_SIZE,
            batching=BatchingConfig(max_queue_delay_microseconds=QUEUE_DELAY_US),
            parameters={
                "family": family,
                "modalities": modalities,
                "architecture": "linear",
                "sample_rate": "16000",
                "clip_seconds": "0.01",
                "num_frames": str(NUM_FRAMES),
                "image_size": str(IMAGE_SIZE),
                "answer_output": "logits",
                "heads": ",".join(heads),
                "missing_modality": "route",
                "intra_op_thread_count": "1",
                "inter_op_thread_count": "1",
            },
        )
    )
    write_model_config(model_dir / "config.pbtxt", config)
    return model_dir


def build_tiny_repository(repo: Path, *, with_lookup: bool = False) -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    write_model(repo, "tiny_audio", audio_graph(), (AUDIO,), ("audio",), "audio")
    write_model(repo, "tiny_av", audio_video_graph(), (AUDIO, VIDEO), ("audio", "video"), "audio+video")
    if with_lookup:
        write_model(repo, "tiny_lookup", lookup_graph(), (AUDIO,), (), "audio", family="lookup")
    return repo


def tree_digest(root: Path) -> dict[str, str]:
    """Every path under root with its content hash (or symlink target): detects any change."""
    digest = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            digest[key] = "-> " + os.readlink(path)
        elif path.is_file():
            digest[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            digest[key] = "dir"
    return digest


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text` (e.g. a unique temp dir)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process exited while we looked
            continue
    return pids


def tritonserver_pids(text: str) -> list[int]:
    """Pids of live tritonserver processes (not their Python stubs) whose command line contains `text`."""
    pids = []
    for pid in processes_mentioning(text):
        try:
            program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if program.endswith(b"/tritonserver"):
            pids.append(pid)
    return pids


class LineReader:
    """Collects a child's output lines on a thread, so waiting for a line can time out instead of hang."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._pump, args=(process,), daemon=True)
        self._thread.start()

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._new:
                self.lines.append(line.rstrip("\n"))
                self._new.notify_all()
        with self._new:
            self._done = True
            self._new.notify_all()

    def count(self, fragment: str) -> int:
        with self._new:
            return sum(fragment in line for line in self.lines)

    def wait_for(self, marker: str, timeout: float, occurrences: int = 1) -> list[str]:
        """Every line so far, once `occurrences` lines contain `marker`; AssertionError after `timeout`."""

        def seen() -> bool:
            return sum(marker in line for line in self.lines) >= occurrences

        with self._new:
            if not self._new.wait_for(lambda: seen() or self._done, timeout) or not seen():
                raise AssertionError(f"no {marker!r} (x{occurrences}) within {timeout} s; output so far: {self.lines}")
            return list(self.lines)

    def join(self, timeout: float) -> list[str]:
        self._thread.join(timeout)
        return self.lines


def make_inputs(model: str, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if model == "tiny_lookup":
        return {"audio": rng.integers(0, LOOKUP_ROWS, (batch, CLIP_SAMPLES)).astype(np.float32)}
    inputs = {"audio": rng.standard_normal((batch, CLIP_SAMPLES)).astype(np.float32)}
    if model == "tiny_av":
        inputs["video"] = rng.integers(0, 256, (batch, NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    return inputs


@dataclass(frozen=True)
class Tiny:
    """The helpers above, for test modules (with --import-mode=importlib they cannot import conftest)."""

    clip_samples: int = CLIP_SAMPLES
    num_frames: int = NUM_FRAMES
    image_size: int = IMAGE_SIZE
    labels: tuple[str, ...] = LABELS
    build_repository = staticmethod(build_tiny_repository)
    write_model = staticmethod(write_model)
    audio_graph = staticmethod(audio_graph)
    tree_digest = staticmethod(tree_digest)
    processes_mentioning = staticmethod(processes_mentioning)
    tritonserver_pids = staticmethod(tritonserver_pids)
    line_reader = LineReader
    inputs = staticmethod(make_inputs)


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    return Tiny()


@pytest.fixture
def tiny_repository(tmp_path: Path) -> Path:
    return build_tiny_repository(tmp_path / "model_repository")


@pytest.fixture(scope="module")
def module_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_repository(tmp_path_factory.mktemp("triton") / "model_repository", with_lookup=True)


@pytest.fixture(scope="module")
def module_repository_digest(module_repository: Path) -> dict[str, str]:
    """The source repository as it was before any server saw it."""
    return tree_digest(module_repository)


@pytest.fixture(scope="module")
def triton_server(module_repository: Path, module_repository_digest: dict[str, str]) -> Iterator[LocalTriton]:
    """One real tritonserver per test module, on free ports, always stopped."""
    server = LocalTriton(module_repository, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=60)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def onnx_reference(module_repository: Path) -> Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """The same model run in-process with onnxruntime: what Triton must answer."""
    import onnxruntime as ort

    sessions: dict[str, ort.InferenceSession] = {}

    def run(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if model not in sessions:
            path = module_repository / model / "1" / "model.onnx"
            sessions[model] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        session = sessions[model]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs)))

    return run


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every temp dir LocalTriton (and its supervisor) makes goes here, so a test can see that
    none is left behind."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


@pytest.fixture
def one_model_repository(tiny_repository: Path) -> Path:
    shutil.rmtree(tiny_repository / "tiny_av")  # one model starts faster
    return tiny_repository

