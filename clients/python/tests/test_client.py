"""idem_client against the shared tables (retry cases, content keys) and a
real `idem demo`."""

from __future__ import annotations

import email.utils
import json
import socket
import time

import pytest
import requests

from idem_client import (
    DeadlineExceeded,
    GaveUp,
    IdempotentClient,
    KeyInvalid,
    KeyReused,
    RetryEvent,
    canonical_json,
    classify,
    content_key,
    parse_retry_after,
    time_key,
    uuid_key,
)
from conftest import LossyLink

PAYMENT = {"amount": 42.5, "currency": "EUR", "recipient": "acct_123"}


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_shared_table_of_cases(cases):
    assert len(cases) >= 20
    for case in cases:
        assert classify(case["outcome"], case.get("problem")) is case["retry"], case["name"]


def test_the_shared_content_key_vectors(vectors):
    assert len(vectors) >= 10
    for v in vectors:
        parsed = json.loads(v["json"])
        assert canonical_json(parsed) == v["canonical"], v["name"]
        assert content_key(parsed) == v["key"], v["name"]
        # The same text as bytes (a `data=` body) gives the same key.
        assert content_key(v["json"].encode("utf-8")) == v["key"], v["name"]
    assert content_key(b"amount=10") == "baf62725a03085761123ef3983498c0acffd60eea7f6cad5d28ee7c3badfc592"


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
    seen = []
    client = IdempotentClient(attempt_timeout=0.3, on_retry=seen.append)
    answer = client.post(f"{slow_demo.url}/payments", json=PAYMENT)
    assert answer.status == 201
    assert answer.replayed, answer.attempts
    assert answer.attempts >= 3
    assert slow_demo.payments() == 1
    # The hook saw each retry: its attempt, delay and reason, and the key.
    assert [e.attempt for e in seen] == list(range(1, answer.attempts))
    assert all(isinstance(e, RetryEvent) and e.key == answer.key and e.delay >= 0 for e in seen)
    assert "409" in seen[-1].reason or "timed out" in seen[-1].reason


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
    with pytest.raises(KeyReused) as reused:
        client.post(url, json={"amount": 1, "recipient": "acct_9"}, key="reused-key-0000001")
    assert reused.value.answer.status == 422
    with pytest.raises(KeyInvalid):
        client.post(url, json=PAYMENT, key="bad key")
    bad = client.post(url, json={"amount": -1})
    assert (bad.status, bad.attempts) == (400, 1)
    assert demo.payments() == 1


def test_requests_keywords_pass_through_and_headers_ignore_case(demo):
    session = requests.Session()
    with IdempotentClient(session=session) as client:
        answer = client.post(
            f"{demo.url}/payments",
            json=PAYMENT,
            params={"source": "test"},
            timeout=5,
            auth=("user", "secret"),
            allow_redirects=False,
        )
    assert answer.status == 201
    assert answer.headers["content-type"] == answer.headers["Content-Type"]
    assert answer.json()["amount"] == 42.5
    assert demo.payments() == 1


def test_giving_up_carries_the_key_attempts_and_last_error():
    client = IdempotentClient(max_attempts=3, base_delay=0.01)
    with pytest.raises(GaveUp) as e:
        client.post(f"http://127.0.0.1:{dead_port()}/payments", json=PAYMENT, key="give-up-key-00001")
    assert e.value.attempts == 3
    assert e.value.key == "give-up-key-00001"
    assert isinstance(e.value.last_error, requests.ConnectionError)
    assert e.value.__cause__ is e.value.last_error
    assert e.value.last_response is None


def test_giving_up_on_answers_keeps_the_last_one(always_503):
    client = IdempotentClient(max_attempts=2, base_delay=0.01)
    with pytest.raises(GaveUp) as e:
        client.post(f"{always_503}/payments", json=PAYMENT, key="give-up-key-00002")
    assert (e.value.key, e.value.attempts) == ("give-up-key-00002", 2)
    assert e.value.last_error is None
    last = e.value.last_response
    assert last is not None and last.status == 503 and last.key == "give-up-key-00002"
    assert last.headers["retry-after"] == "0"


def test_the_deadline_bounds_a_call_to_a_dead_server():
    client = IdempotentClient(max_attempts=1000, deadline=0.7)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as e:
        client.post(f"http://127.0.0.1:{dead_port()}/payments", json=PAYMENT)
    assert time.monotonic() - started < 1.5
    assert isinstance(e.value, GaveUp) and e.value.key
