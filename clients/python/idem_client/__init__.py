"""idem_client: the client half of the idempotency contract (SPEC.md, "Keys on
the client side"), on ``requests``.

One key per logical operation, chosen before the first try and sent on every
retry. Network failures, timeouts, 409, 429 and 5xx are retried with
exponential backoff and full jitter, honouring ``Retry-After``; other 4xx are
never retried; attempts and an overall deadline bound the call. The answer says
whether it was a replay, and problem+json refusals raise typed exceptions.

    from idem_client import IdempotentClient
    client = IdempotentClient()
    answer = client.post("http://127.0.0.1:8080/payments", json={"amount": 42.5, "recipient": "acct_123"})
    print(answer.status, answer.replayed)
"""

from __future__ import annotations

import email.utils
import hashlib
import json as jsonlib
import random
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Union

import requests

__all__ = [
    "IdempotentClient",
    "Answer",
    "IdemError",
    "KeyReused",
    "KeyInvalid",
    "KeyMissing",
    "BodyTooLarge",
    "GaveUp",
    "DeadlineExceeded",
    "classify",
    "parse_retry_after",
    "uuid_key",
    "content_key",
    "time_key",
]

Outcome = Union[str, int]
"""What one attempt ended with: ``"connect_error"``, ``"timeout"`` or a status."""


def classify(outcome: Outcome) -> bool:
    """Whether an attempt's outcome is worth another try (pure; the same table
    of cases as the Rust and JavaScript clients, clients/retry-cases.json)."""
    if outcome in ("connect_error", "timeout"):
        return True
    if isinstance(outcome, int):
        return outcome in (409, 429) or 500 <= outcome <= 599
    raise ValueError(f"unknown outcome {outcome!r}")


def parse_retry_after(value: str, now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an
    HTTP-date (a date in the past means 0). ``None`` when unreadable."""
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if at is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, at.timestamp() - now)


def uuid_key() -> str:
    """A random UUID v4: the default key."""
    return str(uuid.uuid4())


def content_key(body: Any) -> str:
    """SHA-256 of the canonical JSON of ``body``: the same content is the same
    operation, even from two processes."""
    canonical = jsonlib.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def time_key() -> str:
    """Milliseconds since the epoch, a dash, 64 random bits in hex: sortable."""
    return f"{int(time.time() * 1000)}-{secrets.token_hex(8)}"


class IdemError(Exception):
    """Base of every refusal or failure this client raises."""


class _Refusal(IdemError):
    def __init__(self, key: str, detail: str, status: int) -> None:
        super().__init__(f"{detail} (key {key}, status {status})")
        self.key = key
        self.detail = detail
        self.status = status


class KeyReused(_Refusal):
    """422: the key was already used for a different request; use a new key."""


class KeyInvalid(_Refusal):
    """400: the server refused the key (malformed, or a bad signature)."""


class KeyMissing(_Refusal):
    """400: the server got no key (a proxy stripping the header?)."""


class BodyTooLarge(_Refusal):
    """413: the body is over the server's limit."""


class GaveUp(IdemError):
    """Every attempt allowed ended with a retryable outcome."""

    def __init__(self, attempts: int, last: str) -> None:
        super().__init__(f"gave up after {attempts} attempts; the last: {last}")
        self.attempts = attempts
        self.last = last


class DeadlineExceeded(IdemError):
    """The next retry would pass the overall deadline."""

    def __init__(self, attempts: int, deadline: float, last: str) -> None:
        super().__init__(f"the deadline of {deadline}s passed after {attempts} attempts; the last: {last}")
        self.attempts = attempts
        self.deadline = deadline
        self.last = last


_REFUSALS = {
    "idempotency-key-reused": KeyReused,
    "idempotency-key-invalid": KeyInvalid,
    "idempotency-key-missing": KeyMissing,
    "request-body-too-large": BodyTooLarge,
}


@dataclass
class Answer:
    """A final answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    replayed: bool
    """True when the server replayed a stored answer: the operation had already executed."""
    key: str
    attempts: int

    def json(self) -> Any:
        return jsonlib.loads(self.body)


@dataclass
class IdempotentClient:
    """The retrying client. Its settings are the Rust client's defaults."""

    max_attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 5.0
    attempt_timeout: float = 10.0
    deadline: float = 30.0
    key_strategy: str = "uuid"
    session: requests.Session = field(default_factory=requests.Session)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def delay(self, retry: int, retry_after: Optional[float]) -> float:
        """The wait before retry number ``retry`` (1 for the first): the
        server's ``Retry-After`` if it gave one, else a uniform draw below
        ``base_delay * 2**(retry-1)`` capped at ``max_delay`` (full jitter)."""
        if retry_after is not None:
            return retry_after
        ceiling = min(self.max_delay, self.base_delay * (2 ** min(retry - 1, 30)))
        return random.uniform(0.0, ceiling)

    def _key_for(self, body: Any) -> str:
        if self.key_strategy == "uuid":
            return uuid_key()
        if self.key_strategy == "content":
            return content_key(body)
        if self.key_strategy == "time":
            return time_key()
        raise ValueError(f"unknown key strategy {self.key_strategy!r}; use uuid, content or time")

    def post(self, url: str, **kwargs: Any) -> Answer:
        """One POST operation; see :meth:`request`."""
        return self.request("POST", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> Answer:
        """One PATCH operation; see :meth:`request`."""
        return self.request("PATCH", url, **kwargs)

    def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        data: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
        key: Optional[str] = None,
    ) -> Answer:
        """Sends one logical operation, retrying with the same key until a
        final answer, a refusal (a typed exception), or the limits."""
        if json is not None:
            data = jsonlib.dumps(json).encode("utf-8")
        key = key or self._key_for(json if json is not None else (data or b"").decode("utf-8", "replace"))
        sent_headers = {"Idempotency-Key": key}
        if json is not None:
            sent_headers["Content-Type"] = "application/json"
        sent_headers.update(headers or {})
        started = self.clock()
        deadline = started + self.deadline
        attempts = 0
        while True:
            attempts += 1
            left = max(0.001, deadline - self.clock())
            retry_after = None
            try:
                res = self.session.request(
                    method, url, data=data, headers=sent_headers, timeout=min(self.attempt_timeout, left)
                )
                outcome: Outcome = res.status_code
                last = f"status {res.status_code}: {res.text[:300]}"
                if "Retry-After" in res.headers:
                    retry_after = parse_retry_after(res.headers["Retry-After"])
            except requests.Timeout as e:
                outcome, last, res = "timeout", f"timed out: {e}", None
            except requests.ConnectionError as e:
                outcome, last, res = "connect_error", f"{e}", None
            if not classify(outcome):
                assert res is not None
                return self._finish(res, key, attempts)
            if attempts >= self.max_attempts:
                raise GaveUp(attempts, last)
            wait = self.delay(attempts, retry_after)
            if self.clock() + wait >= deadline:
                raise DeadlineExceeded(attempts, self.deadline, last)
            self.sleep(wait)

    @staticmethod
    def _finish(res: requests.Response, key: str, attempts: int) -> Answer:
        if res.headers.get("Content-Type", "").startswith("application/problem+json") and 400 <= res.status_code < 500:
            try:
                problem = res.json()
            except ValueError:
                problem = {}
            slug = str(problem.get("type", "")).replace("/", ":").rsplit(":", 1)[-1]
            refusal = _REFUSALS.get(slug)
            if refusal is not None:
                raise refusal(key, str(problem.get("detail", "")), res.status_code)
        return Answer(
            status=res.status_code,
            headers=dict(res.headers),
            body=res.content,
            replayed=res.headers.get("Idempotent-Replayed", "").lower() == "true",
            key=key,
            attempts=attempts,
        )
