"""Admission control's arithmetic (avserve/gateway/admission.py), and a decoder crash failing only
its own request in a running gateway."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from avserve.gateway.admission import MediaAdmission, Refusal, Ticket
from avserve.media.workers import CRASH_SUFFIX_VARIABLE
from gateway_helpers import FAMILY, assert_error


def test_the_queue_is_bounded_in_service_times_per_worker():
    admission = MediaAdmission(2, queue_factor=2.0, initial_service=0.1)
    tickets = [admission.admit(remaining=30) for _ in range(5)]  # waits 0, .05, .1, .15, .2 s
    assert all(isinstance(t, Ticket) for t in tickets) and admission.pending == 5
    refused = admission.admit(remaining=30)  # would wait 0.25 s > 2 x 0.1 s
    assert isinstance(refused, Refusal) and refused.code == "media_queue_full" and refused.retry_after == 1
    tickets[0].media_done(0.3)  # a slower request than thought: the estimate moves towards it
    assert admission.service == pytest.approx(0.1 + 0.1 * (0.3 - 0.1)) and admission.pending == 4
    tickets[0].release()  # once only
    assert admission.pending == 4
    tickets[1].release()  # failed before its media work: no measurement
    assert admission.service == pytest.approx(0.12) and admission.pending == 3
    assert isinstance(admission.admit(remaining=30), Ticket)


def test_deadlines_and_latency_targets_refuse_what_would_be_late():
    admission = MediaAdmission(1, queue_factor=100.0, latency_target=1.0, initial_service=0.4)
    first = admission.admit(remaining=0.1)  # nothing queued: always tried, even if too short
    assert isinstance(first, Ticket)
    late = admission.admit(remaining=0.5)  # 0.4 s wait + 0.4 s decode > 0.5 s left
    assert isinstance(late, Refusal) and late.code == "deadline_unreachable"
    assert isinstance(admission.admit(remaining=30), Ticket)  # 0.4 + 0.4 <= 1.0 target
    over_target = admission.admit(remaining=30)  # 0.8 + 0.4 > 1.0
    assert isinstance(over_target, Refusal) and over_target.code == "media_queue_full"
    slow = MediaAdmission(1, queue_factor=100.0, initial_service=2.5)
    slow.admit(remaining=30)
    slow.admit(remaining=30)
    refused = slow.admit(remaining=6)  # 5 s wait + 2.5 s > 6 s: come back when 1.5 s of it is done
    assert isinstance(refused, Refusal) and refused.retry_after == 2


def test_a_decoder_crash_fails_only_its_request(gateway_factory, serving_repository, clips, monkeypatch):
    monkeypatch.setenv(CRASH_SUFFIX_VARIABLE, ".crashme")  # read when the gateway's workers start
    gateway = gateway_factory(repository=serving_repository, default_model=FAMILY)
    body = clips.av.read_bytes()

    async def run():
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            requests = [client.post("/classify", files={"file": ("clip.mp4", body)}) for _ in range(6)]
            requests.insert(3, client.post("/classify", files={"file": ("clip.crashme", body)}))
            answers = await asyncio.gather(*requests)
            after = await client.post("/classify", files={"file": ("clip.mp4", body)})
            metrics = (await client.get("/metrics")).text
            return answers, after, metrics

    answers, after, metrics = asyncio.run(run())
    crashed = answers.pop(3)
    body = assert_error(crashed, 422, "decoder_crashed")
    assert "SIGSEGV" in body["error"]["message"]
    assert [a.status_code for a in answers] == [200] * 6 and after.status_code == 200
    assert 'avserve_media_failures_total{reason="crashed"} 1.0' in metrics
