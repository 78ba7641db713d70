"""idem_client: the client half of the idempotency contract (SPEC.md, "Keys on
the client side"), on ``requests`` (and on ``httpx`` for asyncio).

One key per logical operation, chosen before the first try and sent on every
retry. Network failures, timeouts, 408, 429, 5xx and the 409 of a key still
in use are retried with exponential backoff and full jitter, honouring
``Retry-After``; a business 409 and other 4xx are never retried; attempts and
an overall deadline bound the call, and giving up says which key to retry
with later. The answer says whether it was a replay, and problem+json
refusals raise typed exceptions.

    from idem_client import IdempotentClient
    with IdempotentClient() as client:
        answer = client.post("http://127.0.0.1:8080/payments", json={"amount": 42.5, "recipient": "acct_123"})
    print(answer.status, answer.replayed)
"""

from __future__ import annotations

from typing import Any

from ._core import (
    KEY_IN_USE,
    Answer,
    BodyTooLarge,
    DeadlineExceeded,
    GaveUp,
    Headers,
    IdemError,
    KeyInvalid,
    KeyMissing,
    KeyReused,
    RetryEvent,
    canonical_json,
    classify,
    content_key,
    parse_retry_after,
    problem_slug,
    time_key,
    uuid_key,
)
from ._sync import IdempotentClient

__all__ = [
    "IdempotentClient",
    "AsyncIdempotentClient",
    "Answer",
    "Headers",
    "RetryEvent",
    "IdemError",
    "KeyReused",
    "KeyInvalid",
    "KeyMissing",
    "BodyTooLarge",
    "GaveUp",
    "DeadlineExceeded",
    "KEY_IN_USE",
    "canonical_json",
    "classify",
    "parse_retry_after",
    "problem_slug",
    "uuid_key",
    "content_key",
    "time_key",
]


def __getattr__(name: str) -> Any:
    # The asyncio client needs httpx (the `async` extra): imported on use.
    if name == "AsyncIdempotentClient":
        from ._async import AsyncIdempotentClient

        return AsyncIdempotentClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
