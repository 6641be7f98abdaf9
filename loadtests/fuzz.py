"""Fuzz the gateway with damaged clips and odd uploads: no answer may be a 5xx (issue 13).

    .venv/bin/python -m loadtests.fuzz --mutations 10000       # exports a seeded zorro_tiny, starts a gateway
    .venv/bin/python -m loadtests.fuzz --url http://127.0.0.1:8080 --mutations 500   # any running gateway

Every case is a valid synthetic clip (several containers and codecs) mutated one way --
bit flips, overwritten bytes and bursts, inserted / deleted / duplicated ranges, cuts, two
files spliced, mangled headers, container signatures and box / chunk sizes, damaged packets
-- and sent as multipart or as a raw body, a fifth of them with odd filenames, content
types or query parameters. Cases are a pure function of (seed, index), so any failure is
reproducible with `--seed S --start I --mutations 1`.

What counts as a failure: a status >= 500, no answer within `--timeout` (a hang), an error
body without the `{"error": {"code", "message"}}` shape, or (when this script started the
gateway) a spooled upload left behind. `tests/gateway/test_fuzz.py` runs a few hundred cases
in CI; the full run's numbers are in docs/hardening.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from avserve.media.synthetic import AudioTrack, VideoTrack, damage_packets, write_clip

# The valid clips every case starts from: the containers and codecs uploads come in.
_FOOTAGE = dict(width=64, height=48, fps=12, num_frames=24, content="footage")
SOURCES: dict[str, dict] = {
    "h264-aac.mp4": dict(video=VideoTrack(**_FOOTAGE), audio=AudioTrack("aac", 44100, "stereo", seconds=2.0)),
    "mpeg4-ac3.avi": dict(video=VideoTrack("mpeg4", **_FOOTAGE), audio=AudioTrack("ac3", 48000, "stereo", seconds=2.0)),
    "vp9-opus.webm": dict(
        video=VideoTrack("libvpx-vp9", **_FOOTAGE, options={"deadline": "realtime", "cpu-used": "8"}),
        audio=AudioTrack("libopus", 48000, "stereo", seconds=2.0),
    ),
    "h264-flac.mkv": dict(video=VideoTrack(**_FOOTAGE, gop=6), audio=AudioTrack("flac", 16000, "5.1", seconds=2.0)),
    "mjpeg-pcm.avi": dict(video=VideoTrack("mjpeg", pix_fmt="yuvj420p", **_FOOTAGE), audio=AudioTrack("pcm_s16le", 8000, "mono")),
    "aac.m4a": dict(audio=AudioTrack("aac", 16000, "mono", seconds=2.0)),
    "mp3.mp3": dict(audio=AudioTrack("libmp3lame", 22050, "mono", seconds=2.0)),
    "vorbis.ogg": dict(audio=AudioTrack("vorbis", 22050, "stereo", seconds=2.0)),
    "u8.wav": dict(audio=AudioTrack("pcm_u8", 11025, "mono", seconds=1.0)),
    "h264.mp4": dict(video=VideoTrack(**_FOOTAGE)),
}

MUTATIONS = (
    "bitflip", "bytes", "burst", "zeros", "insert", "delete", "duplicate", "truncate", "splice",
    "header", "signature", "sizes", "packets",
)  # fmt: skip
_SIGNATURES = (b"\x00\x00\x00\x18ftypisom", b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"fLaC", b"ID3\x04", b"FLV\x01")
# Four-character codes and ids whose neighbouring length fields structure the containers above.
_SIZE_MARKERS = (
    b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsz", b"stco", b"stts", b"stsc", b"mdat", b"avcC", b"esds",
    b"LIST", b"movi", b"idx1", b"strh", b"strf", b"00dc", b"01wb", b"\x18\x53\x80\x67", b"\x1f\x43\xb6\x75",
    b"\xa3", b"OggS", b"data", b"fmt ",
)  # fmt: skip
_EXTREME_SIZES = (0, 1, 7, 8, 9, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFF8)
_ODD_FILENAMES = (
    "", "x", "../../../../etc/passwd", "clip.mp4\x00.txt", "клип 🎬.mp4", "a" * 2000 + ".mp4", "no-extension",
    ".mp4", "clip.exe", "clip.mp4.", " clip .mkv ", "%2e%2e%2fclip.mp4", "CON", "clip;rm -rf.mp4", 'q"uote.mp4',
)  # fmt: skip
_ODD_CONTENT_TYPES = (
    "application/octet-stream", "video/mp4", "audio/mpeg", "video/x-msvideo", "video/webm; codecs=garbage",
    "text/plain", "image/png", "multipart/form-data", "multipart/form-data; boundary=", "video/*", "x/y/z",
    "video/mp4; charset=utf-8" + "; p=1" * 200,
)  # fmt: skip
_ODD_PARAMS = (
    {"start": "1e308"}, {"start": "-1"}, {"start": "nan"}, {"duration": "inf"}, {"duration": "0.000001"},
    {"duration": "59.9"}, {"start": "1.9", "duration": "0.05"}, {"top_k": "100000"}, {"top_k": "-5"},
    {"modality": "audio"}, {"modality": "video"}, {"modality": "smell"}, {"model": "../zorro_tiny"},
    {"model": "x" * 5000}, {"timeout": "1e9"}, {"timeout": "-1"}, {"start": "0x10"},
)  # fmt: skip
# (No tiny `timeout`: a deadline the client makes too short for any answer is a 504 by design.)


@dataclass(frozen=True)
class Case:
    index: int
    mutation: str
    source: str
    body: bytes = field(repr=False)
    multipart: bool
    filename: str
    content_type: str
    params: dict[str, str]

    def describe(self) -> str:
        how = f"multipart {self.filename[:40]!r}" if self.multipart else "raw"
        return (
            f"case {self.index}: {self.mutation} of {self.source}, {len(self.body)} bytes, {how}, "
            f"{self.content_type[:40]!r}, {self.params}"
        )


def make_sources(directory: Path) -> dict[str, bytes]:
    """Write the valid clips into `directory` (kept when already there); name -> bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    sources = {}
    for name, tracks in SOURCES.items():
        path = directory / name
        if not path.is_file():
            partial = path.with_name("partial-" + name)
            write_clip(partial, **tracks)
            partial.replace(path)
        sources[name] = path.read_bytes()
    return sources


def make_case(sources: dict[str, bytes], index: int, seed: int, scratch: Path) -> Case:
    """The `index`-th case of run `seed`: the same every time."""
    rng = np.random.default_rng([seed, index])
    mutation = MUTATIONS[index % len(MUTATIONS)]  # every kind in every run, however short
    names = sorted(sources)
    source = names[int(rng.integers(len(names)))]
    body = _mutate(mutation, source, sources, rng, scratch)
    multipart = bool(rng.random() < 0.75)
    filename, content_type, params = source, _CONTENT_TYPES.get(Path(source).suffix, "application/octet-stream"), {}
    if rng.random() < 0.2:  # odd request framing on top of the odd bytes
        choice = int(rng.integers(3))
        if choice == 0:
            filename = _ODD_FILENAMES[int(rng.integers(len(_ODD_FILENAMES)))]
        elif choice == 1:
            content_type = _ODD_CONTENT_TYPES[int(rng.integers(len(_ODD_CONTENT_TYPES)))]
        else:
            params = dict(_ODD_PARAMS[int(rng.integers(len(_ODD_PARAMS)))])
    return Case(index, mutation, source, body, multipart, filename, content_type, params)


_CONTENT_TYPES = {
    ".mp4": "video/mp4", ".avi": "video/x-msvideo", ".webm": "video/webm", ".mkv": "video/x-matroska",
    ".m4a": "audio/mp4", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".wav": "audio/wav",
}  # fmt: skip


def _mutate(kind: str, source: str, sources: dict[str, bytes], rng: np.random.Generator, scratch: Path) -> bytes:
    data = bytearray(sources[source])
    size = len(data)

    def at() -> int:
        return int(rng.integers(size))

    if kind == "bitflip":
        for position in rng.integers(0, size, int(rng.integers(1, 65))):
            data[position] ^= 1 << int(rng.integers(8))
    elif kind == "bytes":
        for position in rng.integers(0, size, int(rng.integers(1, 33))):
            data[position] = int(rng.integers(256))
    elif kind in ("burst", "zeros"):
        start, length = at(), int(rng.integers(16, 4097))
        run = rng.bytes(length) if kind == "burst" else bytes(length)
        data[start : start + length] = run[: max(0, size - start)]
    elif kind == "insert":
        position = at()
        data[position:position] = rng.bytes(int(rng.integers(1, 513)))
    elif kind == "delete":
        start = at()
        del data[start : start + int(rng.integers(1, 4097))]
    elif kind == "duplicate":
        start, length = at(), int(rng.integers(8, 4097))
        position = at()
        data[position:position] = data[start : start + length]
    elif kind == "truncate":
        del data[int(rng.integers(0, size)) :]
    elif kind == "splice":
        other = sources[sorted(sources)[int(rng.integers(len(sources)))]]
        data = data[: at()] + other[int(rng.integers(len(other))) :]
    elif kind == "header":
        for position in rng.integers(0, min(size, 64), int(rng.integers(1, 9))):
            data[position] = int(rng.integers(256))
    elif kind == "signature":
        magic = _SIGNATURES[int(rng.integers(len(_SIGNATURES)))]
        offset = 4 if magic.startswith(b"ftyp") else 0
        data[offset : offset + len(magic)] = magic
    elif kind == "sizes":
        found = [m.start() for marker in _SIZE_MARKERS for m in _finditer(data, marker)]
        for position in rng.choice(found, min(len(found), int(rng.integers(1, 4))), replace=False) if found else []:
            value = _EXTREME_SIZES[int(rng.integers(len(_EXTREME_SIZES)))] if rng.random() < 0.5 else int(rng.integers(2**32))
            where = position - 4 if rng.random() < 0.5 else position + len(b"xxxx")  # mp4: before; riff: after
            if 0 <= where <= size - 4:
                data[where : where + 4] = value.to_bytes(4, "big" if rng.random() < 0.5 else "little")
    elif kind == "packets":
        return _damaged_packets(source, sources[source], rng, scratch)
    else:
        raise ValueError(kind)
    return bytes(data)


def _finditer(data: bytearray, marker: bytes) -> Iterator:
    import re

    return re.finditer(re.escape(marker), data)


def _damaged_packets(source: str, data: bytes, rng: np.random.Generator, scratch: Path) -> bytes:
    """A few packets of one stream overwritten in place (the container intact)."""
    tracks = SOURCES[source]
    stream = "audio" if tracks.get("audio") and (not tracks.get("video") or rng.random() < 0.5) else "video"
    path = scratch / f"clean-{threading.get_ident()}-{source}"
    damaged = scratch / f"damaged-{threading.get_ident()}-{source}"
    path.write_bytes(data)
    count = int(rng.integers(1, 24))  # across the default limit of 16 per stream
    packets = sorted(set(int(i) for i in rng.integers(0, 40, count)))
    for chosen in (packets, [0]):
        try:
            damage_packets(path, damaged, stream=stream, packets=chosen, seed=int(rng.integers(2**31)))
            return damaged.read_bytes()
        except (IndexError, ValueError):  # fewer packets than asked, or no positions (Ogg)
            continue
    return _mutate("burst", source, {source: data}, rng, scratch)


# ---- sending ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    case: Case
    status: int | None  # None: no answer in time, or the connection failed
    code: str  # the error code, "ok", or what went wrong on the client side
    seconds: float

    @property
    def failed(self) -> bool:
        return self.status is None or self.status >= 500 or self.code in ("bad_error_body",)


def send(client, case: Case) -> Outcome:
    import httpx

    began = time.perf_counter()
    try:
        if case.multipart:
            response = client.post(
                "/classify", params=case.params, files={"file": (case.filename, case.body, case.content_type)}
            )
        else:
            response = client.post("/classify", params=case.params, content=case.body,
                                   headers={"content-type": case.content_type})  # fmt: skip
    except httpx.TimeoutException:
        return Outcome(case, None, "timeout", time.perf_counter() - began)
    except (httpx.HTTPError, OSError) as error:  # e.g. the server closed the connection
        return Outcome(case, None, f"connection:{type(error).__name__}", time.perf_counter() - began)
    seconds = time.perf_counter() - began
    if response.status_code == 200:
        return Outcome(case, 200, "ok", seconds)
    try:
        error = response.json()["error"]
        code = str(error["code"])
        assert isinstance(error["message"], str)
    except Exception:
        code = "bad_error_body"
    return Outcome(case, response.status_code, code, seconds)


@dataclass
class Report:
    cases: int = 0
    seconds: float = 0.0
    by_status: Counter = field(default_factory=Counter)  # "422 corrupt_media" -> count
    by_mutation: dict[str, Counter] = field(default_factory=dict)  # mutation -> "200" / "4xx" / "5xx" / ...
    slowest: float = 0.0
    failures: list[str] = field(default_factory=list)
    leftover_uploads: int | None = None
    peak_rss_mib: float | None = None

    @property
    def server_errors(self) -> int:
        return sum(n for key, n in self.by_status.items() if key.split()[0].isdigit() and int(key.split()[0]) >= 500)

    def add(self, outcome: Outcome) -> None:
        self.cases += 1
        self.by_status[f"{outcome.status or '---'} {outcome.code}"] += 1
        kind = "no answer" if outcome.status is None else f"{outcome.status // 100}xx" if outcome.status != 200 else "200"
        self.by_mutation.setdefault(outcome.case.mutation, Counter())[kind] += 1
        self.slowest = max(self.slowest, outcome.seconds)
        if outcome.failed:
            self.failures.append(f"{outcome.status} {outcome.code} after {outcome.seconds:.1f} s: {outcome.case.describe()}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["server_errors"] = self.server_errors
        data["by_status"] = dict(self.by_status.most_common())
        data["by_mutation"] = {k: dict(v) for k, v in sorted(self.by_mutation.items())}
        return data


def run(url: str, sources: dict[str, bytes], *, mutations: int, seed: int = 0, start: int = 0, concurrency: int = 2,
        timeout: float = 60.0, progress: bool = False, rss: Callable[[], float] | None = None) -> Report:  # fmt: skip
    """Send cases `start .. start + mutations - 1` of run `seed` to the gateway at `url`."""
    import httpx

    report = Report()
    began = time.perf_counter()
    lock = threading.Lock()
    every = max(1, mutations // 20)
    with tempfile.TemporaryDirectory(prefix="avserve-fuzz-") as scratch, httpx.Client(
        base_url=url, timeout=timeout, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        def one(index: int) -> None:
            outcome = send(client, make_case(sources, index, seed, Path(scratch)))
            with lock:
                report.add(outcome)
                if rss is not None:
                    report.peak_rss_mib = max(report.peak_rss_mib or 0.0, rss())
                if progress and (report.cases % every == 0 or outcome.failed):
                    elapsed = time.perf_counter() - began
                    print(
                        f"{report.cases:>6}/{mutations}  {elapsed:6.0f} s  {report.cases / elapsed:5.1f}/s  "
                        f"5xx {report.server_errors}  failures {len(report.failures)}  "
                        f"slowest {report.slowest:.1f} s" + (f"  rss {report.peak_rss_mib:.0f} MiB" if rss else ""),
                        flush=True,
                    )
                    if outcome.failed:
                        print("   ", report.failures[-1], flush=True)

        with ThreadPoolExecutor(concurrency) as pool:
            for _ in pool.map(one, range(start, start + mutations)):
                pass
    report.seconds = time.perf_counter() - began
    return report


# ---- the command ------------------------------------------------------------------------------


def _tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants (the gateway and its media workers)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss.get(current, 0)
        todo.extend(children.get(current, []))
    return total / 2**20


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutations", type=int, default=1000, help="cases to send")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="index of the first case (to replay one)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a request counts as a hang")
    parser.add_argument("--url", help="fuzz this running gateway instead of starting one")
    parser.add_argument("--repository", type=Path, help="serve this repository (default: export a seeded zorro_tiny)")
    parser.add_argument("--clips", type=Path, default=Path.home() / ".cache" / "avserve-fuzz" / "clips")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)

    sources = make_sources(args.clips)
    if args.url:
        report = run(args.url, sources, mutations=args.mutations, seed=args.seed, start=args.start,
                     concurrency=args.concurrency, timeout=args.timeout, progress=True)  # fmt: skip
    else:
        report = _run_own_gateway(args, sources)
    print(json.dumps({k: v for k, v in report.to_dict().items() if k != "failures"}, indent=2))
    for failure in report.failures[:50]:
        print("FAILED", failure)
    if args.out:
        args.out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"{report.cases} cases in {report.seconds:.0f} s: {report.server_errors} x 5xx, {len(report.failures)} failures"
          + (f", {report.leftover_uploads} leftover uploads" if report.leftover_uploads is not None else ""))
    return report


def _run_own_gateway(args, sources: dict[str, bytes]) -> Report:
    """Start the gateway the way the bench does (loadtests.serve_gateway, a child process)."""
    from types import SimpleNamespace

    from loadtests.servers import Server

    with tempfile.TemporaryDirectory(prefix="avserve-fuzz-gateway-") as workdir:
        workdir = Path(workdir)
        repository = args.repository
        if repository is None:
            from loadtests.bench import prepare_model

            print("exporting a seeded zorro_tiny ...", flush=True)
            _, _, repository, _ = prepare_model(SimpleNamespace(checkpoint=None, preset="zorro_tiny", seed=0), workdir)
        uploads = workdir / "uploads"
        uploads.mkdir()
        os.environ["AVSERVE_UPLOAD_DIR"] = str(uploads)  # the child reads it; its spool dir is ours to inspect
        try:
            server = Server.start_module("gateway", "loadtests.serve_gateway", workdir / "gateway.log",
                                         "--repository", str(repository))  # fmt: skip
        finally:
            del os.environ["AVSERVE_UPLOAD_DIR"]
        try:
            print(f"gateway on {server.url} (log {workdir / 'gateway.log'})", flush=True)
            report = run(server.url, sources, mutations=args.mutations, seed=args.seed, start=args.start,
                         concurrency=args.concurrency, timeout=args.timeout, progress=True,
                         rss=lambda: _tree_rss_mib(server.process.pid))  # fmt: skip
            deadline = time.monotonic() + 10
            while any(uploads.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.1)
            report.leftover_uploads = sum(1 for _ in uploads.iterdir())
            if report.leftover_uploads:
                report.failures.append(f"{report.leftover_uploads} spooled uploads left in {uploads}")
        finally:
            server.stop()
            log = (workdir / "gateway.log").read_text(errors="replace")
            if "Traceback" in log:
                print("the gateway logged tracebacks:\n" + log[-5000:], file=sys.stderr)
    return report


if __name__ == "__main__":
    sys.exit(1 if main().failures else 0)
