"""The obvious alternative a user would write: FastAPI + PyTorch eager, one request at a time.

Same decoding as the gateway (avserve.media: probe, resampled mono PCM, sampled RGB frames),
same weights (a training run via `load_run`, or a preset + a saved state dict), the graph
picked by which tracks the clip has (Zorro's forward takes audio=None / video=None). Each
request holds one lock from spooling to answer, as a plain `def` endpoint with a global model
usually ends up: no batching, no overlap of decoding and inference.

    .venv/bin/python -m loadtests.baseline_server --checkpoint runs/zorro_tiny_sup --port 8090
    .venv/bin/python -m loadtests.baseline_server --preset zorro_tiny --num-classes 12 --state-dict sd.pt --port 8090

Lives under loadtests/ (it imports torch and training, which avserve/ never does).
"""


import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path


def build_app(model, labels: list[str]):
    import numpy as np
    import torch
    from fastapi import FastAPI, HTTPException, UploadFile

    from avserve.media import MediaError, decode_audio, decode_video, probe

    cfg = model.config
    lock = threading.Lock()
    app = FastAPI(title="baseline: FastAPI + PyTorch eager")

    @app.get("/readyz")
    def readyz() -> dict:
        return {"ready": True}

    @app.post("/classify")
    def classify(file: UploadFile) -> dict:
        with lock:
            began = time.perf_counter()
            suffix = Path(file.filename or "clip").suffix
            with tempfile.NamedTemporaryFile(suffix=suffix) as spool:
                shutil.copyfileobj(file.file, spool)
                spool.flush()
                upload = time.perf_counter()
                try:
                    info = probe(spool.name)
                    probed = time.perf_counter()
                    inputs = {}
                    if info.has_audio:
                        pcm = decode_audio(spool.name, sample_rate=cfg.sample_rate, start=0.0, duration=cfg.clip_seconds).samples
                        pcm = np.concatenate([pcm, np.zeros(max(0, cfg.clip_samples - len(pcm)), np.float32)])[: cfg.clip_samples]
                        inputs["audio"] = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32))[None]
                    if info.has_video:
                        frames = decode_video(spool.name, num_frames=cfg.num_frames, size=cfg.image_size, start=0.0,
                                              duration=cfg.clip_seconds).frames
                        inputs["video"] = torch.from_numpy(np.ascontiguousarray(frames))[None]
                except MediaError as error:
                    raise HTTPException(422, str(error)) from None
                decoded = time.perf_counter()
            with torch.inference_mode():
                logits = model(**inputs)["logits"][0]
            inferred = time.perf_counter()
            scores = torch.softmax(logits.double(), -1)
            top = torch.argsort(scores, descending=True)[:5].tolist()
            ms = lambda a, b: round((b - a) * 1000, 3)  # noqa: E731
            return {
                "model": {"name": "eager_" + "+".join(sorted(inputs)), "backend": "torch"},
                "predictions": [{"label": labels[i], "score": float(scores[i])} for i in top],
                "timings_ms": {"upload": ms(began, upload), "probe": ms(upload, probed), "decode": ms(probed, decoded),
                               "inference": ms(decoded, inferred), "total": ms(began, time.perf_counter())},
            }

    return app


def load_model(args):
    import torch

    if args.checkpoint:
        from training.checkpoint import load_run

        model, info = load_run(args.checkpoint)
        return model, list(info.classes)
    from training.models import create_model

    model = create_model(args.preset, num_classes=args.num_classes)
    model.load_state_dict(torch.load(args.state_dict, map_location="cpu", weights_only=True))
    return model.eval(), [f"class_{i}" for i in range(args.num_classes)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a training run directory (runs/...)")
    parser.add_argument("--preset", default="zorro_tiny")
    parser.add_argument("--num-classes", type=int, default=12)
    parser.add_argument("--state-dict", help="torch.save(model.state_dict()) of the preset")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if not args.checkpoint and not args.state_dict:
        parser.error("give --checkpoint or --state-dict")

    import uvicorn

    model, labels = load_model(args)
    uvicorn.run(build_app(model, labels), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
