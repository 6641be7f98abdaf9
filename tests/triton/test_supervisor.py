"""SupervisedTriton: the backoff policy alone, then real servers that die and are (or are not) restarted."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from avserve.processes import describe_exit
from avserve.triton import Backoff, RestartPolicy, SupervisedTriton, TritonGaveUp

# ---- the policy: pure arithmetic, no server ----------------------------------------------------


def test_delays_grow_exponentially_up_to_the_cap_then_give_up() -> None:
    policy = RestartPolicy(initial_delay=1.0, multiplier=2.0, max_delay=10.0, jitter=0.0, max_restarts=6)
    backoff = Backoff(policy)
    assert [backoff.after_failure(up_for=0.0) for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, None]
    assert backoff.failures == 7
    assert backoff.after_failure(up_for=0.0) is None  # stays given up without a healthy period


def test_jitter_only_shortens_a_delay_within_its_fraction() -> None:
    policy = RestartPolicy(initial_delay=1.0, multiplier=2.0, max_delay=4.0, jitter=0.25, max_restarts=4)
    shortest = Backoff(policy, random=lambda: 0.999999)
    longest = Backoff(policy, random=lambda: 0.0)
    assert [longest.after_failure(0.0) for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert [round(shortest.after_failure(0.0), 4) for _ in range(4)] == [0.75, 1.5, 3.0, 3.0]
    seeded = Backoff(policy)  # the real random source: every delay within [75%, 100%] of its step
    for step in (1.0, 2.0, 4.0, 4.0):
        delay = seeded.after_failure(0.0)
        assert delay is not None and 0.75 * step <= delay <= step


def test_a_healthy_period_resets_the_series() -> None:
    policy = RestartPolicy(initial_delay=0.5, multiplier=3.0, max_delay=60.0, jitter=0.0, reset_after=30.0, max_restarts=2)
    backoff = Backoff(policy)
    assert backoff.after_failure(up_for=100.0) == 0.5  # first failure ever
    assert backoff.after_failure(up_for=29.9) == 1.5  # up, but not long enough: same series
    assert backoff.after_failure(up_for=0.0) is None  # 3rd in a row > max_restarts=2: give up
    assert backoff.after_failure(up_for=30.0) == 0.5  # a later healthy period starts over
    assert backoff.failures == 1


def test_zero_restarts_gives_up_at_once_and_bad_policies_are_refused() -> None:
    assert Backoff(RestartPolicy(max_restarts=0)).after_failure(up_for=1e9) is None
    for bad in (
        dict(initial_delay=-1.0),
        dict(initial_delay=5.0, max_delay=1.0),
        dict(multiplier=0.5),
        dict(jitter=1.0),
        dict(max_restarts=-1),
    ):
        with pytest.raises(ValueError):
            RestartPolicy(**bad)


def test_exit_descriptions() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(1) == "exited with code 1"


# ---- real servers ---------------------------------------------------------------------------------

def _eventually(condition: Callable[[], object], timeout: float, what: str) -> float:
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - began


def _metric(supervisor: SupervisedTriton, name: str, **labels: str) -> float | None:
    return supervisor.metrics.registry.get_sample_value(name, labels)


@pytest.mark.slow
def test_restarts_that_keep_failing_give_up_with_a_clear_error(
    one_model_repository: Path, private_tmp: Path, tiny, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that dies, then restarts that cannot succeed (the repository broke meanwhile):
    each failure waits longer, the supervisor gives up after max_restarts, nothing is left."""
    caplog.set_level(logging.INFO, logger="avserve.triton")
    policy = RestartPolicy(initial_delay=0.05, multiplier=2.0, max_delay=1.0, jitter=0.0, max_restarts=3)
    supervisor = SupervisedTriton(one_model_repository, http_port=0, grpc_port=0, metrics_port=0, policy=policy)
    supervisor.start()
    try:
        first = supervisor.server
        assert first is not None and first.tmp_dir is not None
        # The Python backend's python_env_* dir is made in the server's own temp dir, not in /tmp.
        assert [p.parent for p in private_tmp.rglob("python_env_*")] == [first.tmp_dir]
        (one_model_repository / "tiny_audio" / "labels.txt").unlink()  # every restart now fails validation
        os.kill(first.pid, signal.SIGKILL)
        with pytest.raises(TritonGaveUp) as caught:
            supervisor.wait()
    finally:
        supervisor.stop()
    message = str(caught.value)
    assert "restart 3 failed" in message and "missing labels file" in message
    assert "gave up after 4 failures in a row" in message
    assert _metric(supervisor, "avserve_triton_restarts_total", outcome="failed") == 3
    assert _metric(supervisor, "avserve_triton_restarts_total", outcome="ready") == 0
    assert _metric(supervisor, "avserve_triton_unexpected_exits_total") == 1
    assert _metric(supervisor, "avserve_triton_last_exit_code") == -signal.SIGKILL
    assert _metric(supervisor, "avserve_triton_up") == 0
    warnings = [r.getMessage() for r in caplog.records if "restart" in r.getMessage() and "in a row in" in r.getMessage()]
    assert len(warnings) == 3 and "killed by SIGKILL" in warnings[0]
    assert [w.rsplit(" in ", 1)[1] for w in warnings] == ["0.05 s", "0.10 s", "0.20 s"]
    assert tiny.processes_mentioning(str(private_tmp)) == []
    assert list(private_tmp.iterdir()) == []


@pytest.mark.slow
def test_stop_during_the_backoff_does_not_restart(one_model_repository: Path, private_tmp: Path, tiny) -> None:
    policy = RestartPolicy(initial_delay=30.0, max_delay=30.0, jitter=0.0)
    supervisor = SupervisedTriton(
        one_model_repository, http_port=0, grpc_port=0, metrics_port=0, supervisor_port=0, policy=policy
    )
    supervisor.start()
    try:
        killed = supervisor.pid
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        _eventually(lambda: _metric(supervisor, "avserve_triton_consecutive_failures") == 1, 10, "the death noticed")
        assert supervisor.server is None and _metric(supervisor, "avserve_triton_restart_backoff_seconds") == 30.0
        # The killed server's stubs and temp dir are gone before the backoff even ends.
        _eventually(lambda: tiny.processes_mentioning(str(private_tmp)) == [], 5, "the stubs killed")
        assert [p.name.startswith("avserve-triton-supervisor-") for p in private_tmp.iterdir()] == [True]
    finally:
        began = time.monotonic()
        supervisor.stop()
    assert time.monotonic() - began < 5  # no waiting out the backoff
    assert _metric(supervisor, "avserve_triton_restarts_total", outcome="ready") == 0
    assert supervisor.wait() == 0  # stopped, not given up
    assert tiny.processes_mentioning(str(private_tmp)) == []
    assert list(private_tmp.iterdir()) == []
