"""What a response-cache hit costs the server, next to a miss: CPU seconds per request.

    PYTHONPATH=. .venv/bin/python -m loadtests.bench_cache [--requests 56] [--rounds 3] [--repository REPO]

Starts one gateway with the response cache on (loadtests.serve_gateway, the bench's server,
embedded backend, a freshly exported seeded zorro_tiny unless --repository is given) and sends
the bench's request mix (loadtests.clips) in rounds, each round a block of misses, a block of
hits and two reference blocks, so the shared machine's noise falls on all alike:

  * misses: every request a clip with bytes never sent before, the clip plus a trailing ISO BMFF
    `free` box holding a counter: a new cache key, the same decoded media (checked: the first
    variant of each clip is answered exactly like the clip itself);
  * hits: the original clips, answered once before the rounds, so every one is a hit (checked:
    the responses say `cache: "hit"` and the gateway's hit counter grows by exactly that many);
  * the floor any request pays: GET /healthz, and the same uploads refused (404, unknown model)
    before their body is read.

CPU is the server's own account, read from /proc: user + system time of the gateway process and
its descendants (the media workers), plus what it reaped; nothing of this load generator. The
ratio hit / miss is the issue's acceptance figure (<= 0.05).

`refuse_cached_gateway` is the main bench's guard (loadtests/bench.py): a gateway with the
cache on would answer its repeated clips from memory and count them as throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtests.clips import Clip, make_clips
from loadtests.servers import Server

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Per round: misses, hits, and for reference the gateway's floor per request: GET /healthz, and
# the same uploads refused with a 404 before the body is read.
KINDS = ("miss", "hit", "healthz", "refused")


# ---- the guard the main bench uses ---------------------------------------------------------------


async def refuse_cached_gateway(client: httpx.AsyncClient, clip: Clip) -> None:
    """Exit if the gateway answers with a response cache on (its answers carry `cache`)."""
    with clip.path.open("rb") as handle:
        response = await client.post("/classify", files={"file": (clip.path.name, handle.read())},
                                     headers={"Cache-Control": "no-store"})
    if response.status_code == 200 and response.json().get("cache") is not None:
        sys.exit(f"{client.base_url} has the response cache on: its hits would count as throughput. "
                 "Benchmark a gateway with AVSERVE_RESPONSE_CACHE_BYTES=0 (loadtests/bench_cache.py measures hits).")


# ---- server CPU from /proc -------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 onwards


def process_tree_cpu_seconds(root: int) -> float:
    """utime + stime of `root` and every live descendant, plus the reaped children's (cutime + cstime)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue  # exited while listed
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    ticks = 0
    for pid in tree:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / CLOCK_TICKS


# ---- requests ----------------------------------------------------------------------------------------


def with_free_box(body: bytes, counter: int) -> bytes:
    """Other bytes, the same media: a trailing top-level `free` box (ISO BMFF: mp4, m4a) every demuxer skips."""
    payload = counter.to_bytes(8, "big")
    return body + struct.pack(">I", 8 + len(payload)) + b"free" + payload


@dataclass
class Block:
    kind: str  # "miss" or "hit"
    requests: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    upload_bytes: int = 0


async def send_block(client: httpx.AsyncClient, bodies: list[tuple[str, bytes]], expect: str, concurrency: int) -> list[dict]:
    """POST each clip; `expect`: "miss" or "hit" (the answers' `cache`), or "refused" (a 404 for an
    unknown model, answered before the upload is read) or "healthz" (GET /healthz instead)."""
    queue = list(reversed(bodies))
    answers: list[dict] = []

    async def worker() -> None:
        while queue:
            name, body = queue.pop()
            if expect == "healthz":
                response = await client.get("/healthz")
            else:
                params = {"model": "no_such_family"} if expect == "refused" else {}
                response = await client.post("/classify", params=params, files={"file": (name, body)})
            if response.status_code != (404 if expect == "refused" else 200):
                raise RuntimeError(f"{name}: {response.status_code} {response.text}")
            answer = response.json()
            if expect in ("miss", "hit") and answer["cache"] != expect:
                raise RuntimeError(f"{name}: expected a cache {expect}, got {answer['cache']}")
            answers.append(answer)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


def cache_counter(client: httpx.Client, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == f"avserve_response_cache_{name}_total":
                return sample.value
    raise KeyError(name)


async def measure(server: Server, clips: list[Clip], args: argparse.Namespace) -> dict:
    originals = [(clip.path.name, clip.path.read_bytes()) for clip in clips]
    # The bench's request mix, by its weights; the same sequence of clips for misses and hits.
    sequence = random.Random(0).choices(range(len(clips)), weights=[clip.weight for clip in clips], k=args.requests)
    pid = server.process.pid
    blocks = {kind: Block(kind) for kind in KINDS}
    counter = 0
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        # Store every original; check that a variant decodes to the very same answer.
        stored = await send_block(client, originals, "miss", 1)
        variants = [(name, with_free_box(body, counter := counter + 1)) for name, body in originals]
        for (name, _), first, variant in zip(originals, stored, await send_block(client, variants, "miss", 1)):
            for field in ("model", "modalities", "predictions", "heads", "windows"):
                if first[field] != variant[field]:
                    raise RuntimeError(f"{name}: the variant with a free box answered differently ({field})")
        with httpx.Client(base_url=server.url) as sync_client:
            hits_before = cache_counter(sync_client, "hits")
        for round_index in range(args.rounds):
            for kind in KINDS:
                if kind == "miss":
                    bodies = []
                    for index in sequence:
                        name, body = originals[index]
                        counter += 1
                        bodies.append((name, with_free_box(body, counter)))
                else:
                    bodies = [originals[index] for index in sequence]
                cpu, wall = process_tree_cpu_seconds(pid), time.perf_counter()
                await send_block(client, bodies, kind, args.concurrency)
                block = blocks[kind]
                block.wall_seconds += time.perf_counter() - wall
                block.cpu_seconds += process_tree_cpu_seconds(pid) - cpu
                block.requests += len(bodies)
                block.upload_bytes += sum(len(body) for _, body in bodies)
            print(f"[bench_cache] after round {round_index + 1}/{args.rounds}: "
                  + ", ".join(f"{b.kind} {b.cpu_seconds / b.requests * 1000:.2f} ms CPU/request" for b in blocks.values()),
                  flush=True)
        with httpx.Client(base_url=server.url) as sync_client:
            hits = cache_counter(sync_client, "hits") - hits_before
    if hits != blocks["hit"].requests:
        raise RuntimeError(f"the gateway counted {hits} hits for {blocks['hit'].requests} repeated requests")
    return {kind: block for kind, block in blocks.items()}


def sha256_ms_per_mb() -> float:
    data = os.urandom(1 << 20)
    hasher = hashlib.sha256()
    began = time.process_time()
    for _ in range(64):
        hasher.update(data)
    return (time.process_time() - began) / 64 * 1000


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="a model repository (default: export a seeded zorro_tiny)")
    parser.add_argument("--requests", type=int, default=56, help="requests per block (misses, then hits)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--cache-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--clips", type=Path, default=Path.home() / ".cache" / "avserve-bench" / "clips")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="avserve-bench-cache-"))
    repository = args.repository
    if repository is None:
        from loadtests.bench import prepare_model

        print("[bench_cache] exporting a seeded zorro_tiny ...", flush=True)
        _, _, repository, _ = prepare_model(argparse.Namespace(checkpoint=None, preset="zorro_tiny", seed=0), workdir)
    clips = make_clips(args.clips)
    server = Server.start_module("gateway-cache", "loadtests.serve_gateway", workdir / "gateway.log",
                                 "--repository", str(repository), "--response-cache-bytes", str(args.cache_bytes))
    try:
        blocks = asyncio.run(measure(server, clips, args))
    finally:
        server.stop()
    miss, hit = blocks["miss"], blocks["hit"]
    per_request = {kind: block.cpu_seconds / block.requests for kind, block in blocks.items()}
    mean_mb = miss.upload_bytes / miss.requests / 1e6
    result = {
        "requests_per_kind": miss.requests,
        "miss_cpu_ms": per_request["miss"] * 1000,
        "hit_cpu_ms": per_request["hit"] * 1000,
        "hit_over_miss_cpu": per_request["hit"] / per_request["miss"],
        "miss_wall_ms": miss.wall_seconds / miss.requests * 1000 * args.concurrency,
        "hit_wall_ms": hit.wall_seconds / hit.requests * 1000 * args.concurrency,
        "mean_upload_mb": mean_mb,
        "sha256_ms_per_request": sha256_ms_per_mb() * mean_mb,
        "healthz_cpu_ms": per_request["healthz"] * 1000,
        "refused_cpu_ms": per_request["refused"] * 1000,
    }
    print(f"server CPU per request (gateway + media workers), {miss.requests} of each, the bench's mix of "
          f"{len(clips)} clips by weight (mean {mean_mb:.2f} MB):\n"
          f"  miss {result['miss_cpu_ms']:.2f} ms   hit {result['hit_cpu_ms']:.2f} ms   "
          f"hit/miss = {result['hit_over_miss_cpu']:.4f}  (acceptance: <= 0.05)\n"
          f"  latency at concurrency {args.concurrency}: miss {result['miss_wall_ms']:.1f} ms, hit {result['hit_wall_ms']:.1f} ms\n"
          f"  of a hit, hashing the upload (SHA-256, measured here): {result['sha256_ms_per_request']:.3f} ms\n"
          f"  the floor, server CPU per request: GET /healthz {result['healthz_cpu_ms']:.2f} ms, the same uploads "
          f"refused (404 unknown model, body unread) {result['refused_cpu_ms']:.2f} ms")
    return result


if __name__ == "__main__":
    main()
