"""idem_client against the shared table of retry cases and a real `idem demo`."""

from __future__ import annotations

import email.utils
import socket
import time

import pytest

from idem_client import (
    DeadlineExceeded,
    GaveUp,
    IdempotentClient,
    KeyInvalid,
    KeyReused,
    classify,
    content_key,
    parse_retry_after,
    time_key,
    uuid_key,
)
from conftest import LossyLink

PAYMENT = {"amount": 42.5, "currency": "EUR", "recipient": "acct_123"}


def test_the_shared_table_of_cases(cases):
    assert len(cases) >= 15
    for case in cases:
        assert classify(case["outcome"]) is case["retry"], case["name"]


def test_retry_after_seconds_and_dates():
    now = 1_700_000_000.0
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(email.utils.formatdate(now + 7, usegmt=True), now) == pytest.approx(7.0)
    assert parse_retry_after(email.utils.formatdate(now - 7, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None


def test_key_strategies():
    assert len(uuid_key()) == 36 and uuid_key() != uuid_key()
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})
    ms, rand = time_key().split("-")
    assert ms.isdigit() and len(rand) == 16


def test_backoff_has_full_jitter_and_honours_retry_after():
    c = IdempotentClient(base_delay=0.1, max_delay=1.0)
    for retry in range(1, 8):
        assert 0.0 <= c.delay(retry, None) <= min(1.0, 0.1 * 2 ** (retry - 1))
    assert c.delay(3, 4.0) == 4.0


def test_a_slow_first_execution_is_waited_for_and_replayed(slow_demo):
    client = IdempotentClient(attempt_timeout=0.3)
    answer = client.post(f"{slow_demo.url}/payments", json=PAYMENT)
    assert answer.status == 201
    assert answer.replayed, answer.attempts
    assert answer.attempts >= 3
    assert slow_demo.payments() == 1


def test_lost_answers_are_retried_with_the_same_key_and_executed_once(demo):
    link = LossyLink(demo.port, lose=2)
    try:
        client = IdempotentClient()
        answer = client.post(f"{link.url}/payments", json=PAYMENT)
        assert link.dropped == 2
        assert (answer.status, answer.attempts, answer.replayed) == (201, 3, True)
        other = client.post(f"{link.url}/payments", json=PAYMENT)
        assert not other.replayed and other.key != answer.key
        assert demo.payments() == 2
    finally:
        link.close()


def test_refusals_are_typed_and_not_retried(demo):
    client = IdempotentClient()
    url = f"{demo.url}/payments"
    assert client.post(url, json=PAYMENT, key="reused-key-0000001").status == 201
    with pytest.raises(KeyReused):
        client.post(url, json={"amount": 1, "recipient": "acct_9"}, key="reused-key-0000001")
    with pytest.raises(KeyInvalid):
        client.post(url, json=PAYMENT, key="bad key")
    bad = client.post(url, json={"amount": -1})
    assert (bad.status, bad.attempts) == (400, 1)
    assert demo.payments() == 1


def test_the_deadline_bounds_a_call_to_a_dead_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = IdempotentClient(max_attempts=1000, deadline=0.7)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        client.post(f"http://127.0.0.1:{port}/payments", json=PAYMENT)
    assert time.monotonic() - started < 1.5


def test_attempts_are_bounded():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = IdempotentClient(max_attempts=3, base_delay=0.01)
    with pytest.raises(GaveUp) as e:
        client.post(f"http://127.0.0.1:{port}/payments", json=PAYMENT)
    assert e.value.attempts == 3
