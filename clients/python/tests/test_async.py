"""The asyncio client (httpx): the same behaviour, against `idem demo`."""

from __future__ import annotations

import socket

import httpx
import pytest

from idem_client import AsyncIdempotentClient, GaveUp, KeyReused
from conftest import LossyLink

PAYMENT = {"amount": 42.5, "currency": "EUR", "recipient": "acct_123"}

pytestmark = pytest.mark.anyio


async def test_a_slow_first_execution_is_waited_for_and_replayed(slow_demo):
    seen = []
    async with AsyncIdempotentClient(attempt_timeout=0.3, on_retry=seen.append) as client:
        answer = await client.post(f"{slow_demo.url}/payments", json=PAYMENT)
    assert (answer.status, answer.replayed) == (201, True)
    assert answer.attempts >= 3 and len(seen) == answer.attempts - 1
    assert slow_demo.payments() == 1


async def test_lost_answers_are_retried_with_the_same_key_and_executed_once(demo):
    link = LossyLink(demo.port, lose=2)
    try:
        async with AsyncIdempotentClient() as client:
            answer = await client.post(f"{link.url}/payments", json=PAYMENT, params={"via": "lossy"})
        assert (answer.status, answer.attempts, answer.replayed) == (201, 3, True)
        assert answer.headers["CONTENT-TYPE"].startswith("application/json")
        assert demo.payments() == 1
    finally:
        link.close()


async def test_refusals_and_giving_up(demo):
    async with AsyncIdempotentClient(http=httpx.AsyncClient(), max_attempts=2, base_delay=0.01) as client:
        url = f"{demo.url}/payments"
        assert (await client.post(url, json=PAYMENT, key="async-key-0000001")).status == 201
        with pytest.raises(KeyReused):
            await client.post(url, json={"amount": 1, "recipient": "x"}, key="async-key-0000001")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(GaveUp) as e:
            await client.post(f"http://127.0.0.1:{port}/payments", json=PAYMENT, key="async-key-0000002")
        assert (e.value.key, e.value.attempts) == ("async-key-0000002", 2)
        assert isinstance(e.value.last_error, httpx.TransportError)
