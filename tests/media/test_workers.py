"""Supervised media workers (avserve/media/workers.py): a call that crashes its worker, exceeds
its memory or CPU time, or outlives its deadline fails alone, and the pool goes on serving.
The functions sent to the workers are real media calls or standard-library ones (a worker
process imports a function by its module name, which a test module does not have)."""

from __future__ import annotations

import asyncio
import math
import os
import time

import numpy as np
import pytest

from avserve.media import DEFAULT_LIMITS, ErrorCode, MediaError, decode_audio, decode_video, probe
from avserve.media.synthetic import AudioTrack, VideoTrack, write_clip
from avserve.media.workers import CRASH_SUFFIX_VARIABLE, MediaWorkers


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("workers") / "clip.mp4"
    return write_clip(path, video=VideoTrack(width=96, height=64, num_frames=50), audio=AudioTrack(seconds=2.0))


@pytest.fixture()
def workers(monkeypatch):
    monkeypatch.setenv(CRASH_SUFFIX_VARIABLE, ".crashme")
    pool = MediaWorkers(2, memory_bytes=768 * 2**20, cpu_seconds=2)
    pool.start()
    yield pool
    pool.close()


def test_calls_give_what_the_functions_give_in_process(workers, clip):
    async def run():
        info = await workers.run(probe, clip, DEFAULT_LIMITS)
        video = await workers.run(decode_video, clip, num_frames=4, size=(32, 32))
        audio = await workers.run(decode_audio, clip, sample_rate=16000)
        return info, video, audio

    info, video, audio = asyncio.run(run())
    assert info.value == probe(clip, DEFAULT_LIMITS) and info.seconds > 0
    assert np.array_equal(video.value.frames, decode_video(clip, num_frames=4, size=(32, 32)).frames)
    assert np.array_equal(audio.value.samples, decode_audio(clip, sample_rate=16000).samples)
    assert workers.stats.calls == 3 and workers.stats.failures == {}


def test_a_crashing_call_fails_alone(workers, clip, tmp_path):
    crashing = tmp_path / "upload.crashme"
    crashing.write_bytes(clip.read_bytes())

    async def run():
        return await asyncio.gather(
            workers.run(probe, crashing, DEFAULT_LIMITS),
            *(workers.run(probe, clip, DEFAULT_LIMITS) for _ in range(6)),
            return_exceptions=True,
        )

    crashed, *others = asyncio.run(run())
    assert isinstance(crashed, MediaError) and crashed.code is ErrorCode.DECODER_CRASHED, crashed
    assert "SIGSEGV" in crashed.message
    assert all(not isinstance(o, BaseException) and o.value.has_video for o in others), others
    assert workers.stats.failures == {"crashed": 1}
    assert asyncio.run(workers.run(probe, clip, DEFAULT_LIMITS)).value.has_audio  # the pool replaced it


def test_cpu_and_memory_limits_and_deadlines_fail_their_call(workers, clip):
    async def run():
        cpu = workers.run(math.factorial, 10**7)  # minutes of CPU time, capped at 2 s
        memory = workers.run(bytearray, 2**30)  # 1 GiB in a 768 MiB address space
        late = workers.run(time.sleep, 30, timeout=0.5)
        return await asyncio.gather(cpu, memory, late, return_exceptions=True)

    began = time.monotonic()
    cpu, memory, late = asyncio.run(run())
    assert isinstance(cpu, MediaError) and cpu.code is ErrorCode.DECODE_CPU_LIMIT, cpu
    assert isinstance(memory, MediaError) and memory.code is ErrorCode.DECODE_MEMORY_LIMIT, memory
    assert isinstance(late, TimeoutError), late
    assert time.monotonic() - began < 20  # the CPU cap, not the factorial, ended the first call
    assert workers.stats.failures == {"cpu_limit": 1, "memory_limit": 1, "timeout": 1}
    assert asyncio.run(workers.run(probe, clip, DEFAULT_LIMITS)).value.has_video


def test_a_file_that_needs_more_memory_than_a_worker_has(tmp_path):
    """A 4096x2304 stream (within the frame-size limit) in a 280 MiB worker: the decoder's failed
    allocations are reported as the memory limit, not as a corrupt file. (An idle worker maps
    about 230 MiB; this decode needs about 330.)"""
    big = write_clip(
        tmp_path / "big.mp4", video=VideoTrack(width=4096, height=2304, num_frames=2, gop=2, options={"preset": "ultrafast"})
    )
    small = MediaWorkers(1, memory_bytes=280 * 2**20)
    small.start()
    try:
        with pytest.raises(MediaError) as caught:
            asyncio.run(small.run(decode_video, big, num_frames=2, size=(64, 64)))
    finally:
        small.close()
    assert caught.value.code is ErrorCode.DECODE_MEMORY_LIMIT, caught.value
    roomy = MediaWorkers(1, memory_bytes=1536 * 2**20)
    roomy.start()
    try:
        assert asyncio.run(roomy.run(decode_video, big, num_frames=2, size=(64, 64))).value.frames.shape == (2, 64, 64, 3)
    finally:
        roomy.close()


def test_a_cancelled_call_stops_its_worker(workers, clip):
    async def run():
        task = asyncio.ensure_future(workers.run(time.sleep, 30))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await workers.run(os.getpid)

    began = time.monotonic()
    asyncio.run(run())
    assert time.monotonic() - began < 10 and workers.stats.failures == {"cancelled": 1}


def test_workers_start_under_a_long_tmpdir(tmp_path):
    """The forkserver's Unix socket lives in TMPDIR; a path past 107 bytes (nested CI temp dirs)
    would keep every worker from starting, and the gateway with them."""
    import subprocess
    import sys

    long_tmp = tmp_path / ("x" * 60) / ("y" * 60)
    long_tmp.mkdir(parents=True)
    code = (
        "import asyncio, os\n"
        "from avserve.media.workers import MediaWorkers\n"
        "workers = MediaWorkers(1)\n"
        "workers.start()\n"
        "print(asyncio.run(workers.run(os.getpid)).value != os.getpid())\n"
        "workers.close()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TMPDIR": str(long_tmp)})  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr[-2000:]
    assert list(long_tmp.iterdir()) == []
