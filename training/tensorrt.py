"""Build a TensorRT engine (`model.plan`) from an exported ONNX graph, for GPU hosts.

Not run on the project's CPU-only machines: TensorRT cannot be installed there (the PyPI
`tensorrt-*` packages download from NVIDIA's own index). `build_engine` therefore fails
with a clear ExportError when the `tensorrt` module is missing; everything else is the
standard TensorRT 10 Python flow: parse ONNX, one optimisation profile spanning batch
1..max_batch_size on every input, FP16 where the GPU supports it, serialise.
"""

from __future__ import annotations

from pathlib import Path

from training.models import ModalityGraph


def build_engine(onnx_path: Path, plan_path: Path, graph: ModalityGraph, *, max_batch_size: int, fp16: bool = True) -> Path:
    from training.export import ExportError

    try:
        import tensorrt as trt
    except ImportError as error:
        raise ExportError(
            "runtime 'tensorrt_plan' needs the TensorRT Python package and a GPU; install TensorRT "
            "(NGC container or NVIDIA's pip index) or export with --runtime onnxruntime / tensorrt"
        ) from error

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    if fp16 and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        per_example = tuple(tensor.shape)[1:]  # dim 0 is the dynamic batch (-1)
        opt = max(1, max_batch_size // 2)
        profile.set_shape(tensor.name, (1, *per_example), (opt, *per_example), (max_batch_size, *per_example))
    config.add_optimization_profile(profile)

    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    Path(plan_path).write_bytes(bytes(engine))
    return Path(plan_path)
