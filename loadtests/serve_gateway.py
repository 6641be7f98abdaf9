"""Start the avserve gateway for a benchmark, with knobs `avserve serve` does not expose.

    .venv/bin/python -m loadtests.serve_gateway --repository REPO --port 8080 [--no-micro-batching]
    .venv/bin/python -m loadtests.serve_gateway --backend triton --triton-url 127.0.0.1:8001 --port 8080

`--no-micro-batching` sets `AVSERVE_BATCH_POLICY=off` (every request runs alone in
onnxruntime): the "off" side of the micro-batching comparison. Admission control never sheds
unless `--media-queue-factor` is given: the bench draws throughput curves with closed-loop
clients, which a bounded queue would answer with 429s (tests/gateway/test_overload.py gives the
default factor and measures the shedding). Everything else is the gateway exactly as `avserve
serve` builds and runs it. Only 127.0.0.1. The response cache is off unless `--response-cache-bytes`
is given (an `AVSERVE_RESPONSE_CACHE_BYTES` in the environment does not turn it on): the bench
sends the same clips over and over, and hits must not count as throughput (loadtests/bench_cache.py
measures them).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--backend", choices=("embedded", "triton"), default="embedded")
    parser.add_argument("--triton-url", default="127.0.0.1:8001")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-micro-batching", action="store_true")
    parser.add_argument("--batch-max-size", type=int, default=8)
    parser.add_argument("--batch-max-delay-ms", type=float, default=2.0)
    parser.add_argument("--media-queue-factor", type=float, default=1e6, help="admission control (default: never shed)")
    parser.add_argument("--response-cache-bytes", type=int, default=0, help="response cache bound (default 0: off)")
    args = parser.parse_args(argv)

    from avserve.gateway import GatewaySettings, create_app
    from avserve.gateway.observability import configure_logging
    from avserve.gateway.server import run_gateway

    settings = GatewaySettings(
        repository=args.repository, backend=args.backend, triton_url=args.triton_url, log_level="WARNING",
        batch_max_size=args.batch_max_size, batch_max_delay_ms=args.batch_max_delay_ms, backend_max_queue=512,
        max_in_flight_requests=512, media_queue_factor=args.media_queue_factor,
        batch_policy="off" if args.no_micro_batching else "measured",
        response_cache_bytes=args.response_cache_bytes,
    )  # fmt: skip
    configure_logging("WARNING", "text")
    run_gateway(create_app(settings), settings, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
