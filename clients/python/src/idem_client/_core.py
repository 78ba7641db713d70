"""What the synchronous and the asyncio clients share: the retry rule, keys,
canonical JSON, answers, errors and the bookkeeping of one operation's
attempts. No I/O here."""

from __future__ import annotations

import email.utils
import hashlib
import json as jsonlib
import math
import random
import secrets
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Dict, Iterator, Mapping, MutableMapping, Optional, Tuple, Union

Outcome = Union[str, int]
"""What one attempt ended with: ``"connect_error"``, ``"timeout"`` or a status."""

KEY_IN_USE = "idempotency-key-in-use"
"""The problem a server answers (409) while the first request with a key executes."""

Timeout = Union[float, Tuple[float, float], None]
"""An attempt's timeout as ``requests`` takes it: seconds, or (connect, read)."""


def classify(outcome: Outcome, problem: Optional[str] = None) -> bool:
    """Whether an attempt's outcome is worth another try: network failures,
    408 (the server released the key), 429, 5xx, and the 409 whose problem is
    ``idempotency-key-in-use``; a business 409 and every other 4xx are final.
    Pure; the same table of cases as the Rust and JavaScript clients
    (clients/retry-cases.json)."""
    if outcome in ("connect_error", "timeout"):
        return True
    if isinstance(outcome, int) and not isinstance(outcome, bool):
        if outcome == 409:
            return problem == KEY_IN_USE
        return outcome in (408, 429) or 500 <= outcome <= 599
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


def problem_slug(content_type: str, body: bytes) -> Optional[str]:
    """The slug of a problem+json answer (``idempotency-key-in-use`` of
    ``urn:idem:problem:idempotency-key-in-use``), if the answer is one."""
    if not content_type.startswith("application/problem+json"):
        return None
    try:
        problem = jsonlib.loads(body)
    except ValueError:
        return None
    if not isinstance(problem, dict):
        return None
    return str(problem.get("type", "")).replace("/", ":").rsplit(":", 1)[-1] or None


def canonical_json(value: Any) -> str:
    """RFC 8785 (JCS) canonical JSON: members sorted by their names' UTF-16
    code units, numbers as ECMAScript writes doubles (``42.50`` and ``4.25e1``
    are ``42.5``, ``-0`` is ``0``), strings with the fewest escapes. What
    ``JSON.stringify`` gives for sorted members, so the Rust and JavaScript
    clients canonicalise a payload to the same text."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return _number(float(value))
    if isinstance(value, str):
        return jsonlib.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical_json(v) for v in value) + "]"
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise TypeError(f"JSON member names are strings, not {k!r}")
        names = sorted(value, key=lambda k: k.encode("utf-16-be", "surrogatepass"))
        return "{" + ",".join(jsonlib.dumps(k, ensure_ascii=False) + ":" + canonical_json(value[k]) for k in names) + "}"
    raise TypeError(f"{type(value).__name__} is not JSON")


def _number(x: float) -> str:
    """A double as ECMAScript's Number.prototype.toString writes it."""
    if math.isnan(x) or math.isinf(x):
        raise ValueError("JSON has no NaN or Infinity")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    # repr gives the shortest digits that read back to the double.
    _, digit_tuple, exp = Decimal(repr(abs(x))).as_tuple()
    assert isinstance(exp, int)
    digits = "".join(map(str, digit_tuple))
    n = len(digits) + exp  # the value is 0.DIGITS times 10**n
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        e = n - 1
        text = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return sign + text


def uuid_key() -> str:
    """A random UUID v4: the default key."""
    return str(uuid.uuid4())


def content_key(body: Any) -> str:
    """SHA-256, in hex, of the RFC 8785 canonical JSON of ``body``: the same
    content is the same operation, even from two processes or languages.
    ``bytes`` or ``str`` are read as JSON when they are JSON, else hashed as
    they are (UTF-8)."""
    if isinstance(body, (bytes, bytearray, str)):
        raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        try:
            body = jsonlib.loads(raw)
        except ValueError:
            return hashlib.sha256(raw).hexdigest()
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def time_key() -> str:
    """Milliseconds since the epoch, a dash, 64 random bits in hex: sortable."""
    return f"{int(time.time() * 1000)}-{secrets.token_hex(8)}"


class Headers(MutableMapping[str, str]):
    """Headers whose names match whatever their case (``h["retry-after"]``
    is ``h["Retry-After"]``)."""

    def __init__(self, items: Union[Mapping[str, str], None] = None) -> None:
        self._items: Dict[str, Tuple[str, str]] = {}
        for name, value in (items or {}).items():
            self[name] = value

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __setitem__(self, name: str, value: str) -> None:
        self._items[name.lower()] = (name, value)

    def __delitem__(self, name: str) -> None:
        del self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({dict(self)!r})"


@dataclass
class Answer:
    """A final answer."""

    status: int
    headers: Headers
    body: bytes
    replayed: bool
    """True when the server replayed a stored answer: the operation had already executed."""
    key: str
    attempts: int

    def json(self) -> Any:
        return jsonlib.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class RetryEvent:
    """A retry about to happen, as a client's ``on_retry`` hook sees it."""

    attempt: int
    """The attempt that just failed (1 for the first)."""
    delay: float
    """Seconds until the next attempt."""
    reason: str
    """The failed attempt's status and body, or its error."""
    key: str
    """The key, the same on every attempt."""


class IdemError(Exception):
    """Base of every refusal or failure this client raises."""


class _Refusal(IdemError):
    def __init__(self, key: str, detail: str, status: int, answer: Answer) -> None:
        super().__init__(f"{detail} (key {key}, status {status})")
        self.key = key
        self.detail = detail
        self.status = status
        self.answer = answer


class KeyReused(_Refusal):
    """422: the key was already used for a different request; use a new key."""


class KeyInvalid(_Refusal):
    """400: the server refused the key (malformed, or a bad signature)."""


class KeyMissing(_Refusal):
    """400: the server got no key (a proxy stripping the header?)."""


class BodyTooLarge(_Refusal):
    """413: the body is over the server's limit."""


class GaveUp(IdemError):
    """Every attempt allowed ended with a retryable outcome. The operation
    may have run: retry it later with the same ``key``. ``last_response``
    is the last answer (a 503, a 409 in progress...), ``last_error`` the
    last network error (also the exception's ``__cause__``)."""

    def __init__(
        self,
        key: str,
        attempts: int,
        last: str,
        last_response: Optional[Answer] = None,
        last_error: Optional[BaseException] = None,
    ) -> None:
        super().__init__(f"gave up after {attempts} attempts with the key {key} (retry later with it); the last: {last}")
        self.key = key
        self.attempts = attempts
        self.last = last
        self.last_response = last_response
        self.last_error = last_error


class DeadlineExceeded(GaveUp):
    """The next retry would pass the overall deadline (a kind of
    :class:`GaveUp`: the same key, attempts and last outcome)."""

    def __init__(
        self,
        key: str,
        attempts: int,
        deadline: float,
        last: str,
        last_response: Optional[Answer] = None,
        last_error: Optional[BaseException] = None,
    ) -> None:
        super().__init__(key, attempts, last, last_response, last_error)
        self.args = (
            f"the deadline of {deadline}s passed after {attempts} attempts with the key {key} (retry later with it); the last: {last}",
        )
        self.deadline = deadline


_REFUSALS = {
    "idempotency-key-reused": KeyReused,
    "idempotency-key-invalid": KeyInvalid,
    "idempotency-key-missing": KeyMissing,
    "request-body-too-large": BodyTooLarge,
}


@dataclass
class Settings:
    """The retry settings both clients take, with the Rust client's defaults.
    Durations are in seconds."""

    max_attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 5.0
    attempt_timeout: float = 10.0
    deadline: float = 30.0
    key_strategy: str = "uuid"
    on_retry: Optional[Callable[[RetryEvent], None]] = None

    def delay(self, retry: int, retry_after: Optional[float]) -> float:
        """The wait before retry number ``retry`` (1 for the first): the
        server's ``Retry-After`` if it gave one, else a uniform draw below
        ``base_delay * 2**(retry-1)`` capped at ``max_delay`` (full jitter)."""
        if retry_after is not None:
            return retry_after
        ceiling = min(self.max_delay, self.base_delay * (2 ** min(retry - 1, 30)))
        return random.uniform(0.0, ceiling)

    def key_for(self, json: Any, data: Any) -> str:
        if self.key_strategy == "uuid":
            return uuid_key()
        if self.key_strategy == "content":
            return content_key(json if json is not None else (data if data is not None else b""))
        if self.key_strategy == "time":
            return time_key()
        raise ValueError(f"unknown key strategy {self.key_strategy!r}; use uuid, content or time")


def request_parts(
    key: str, json: Any, data: Any, headers: Optional[Mapping[str, str]]
) -> Tuple[Any, Dict[str, str]]:
    """The body to send and the headers, the key among them."""
    sent: Dict[str, str] = {"Idempotency-Key": key}
    if json is not None:
        data = jsonlib.dumps(json).encode("utf-8")
        sent["Content-Type"] = "application/json"
    sent.update(headers or {})
    return data, sent


@dataclass
class Result:
    """What one attempt gave: an answer, or the error of one that got none."""

    status: int = 0
    headers: Optional[Headers] = None
    body: bytes = b""
    error: Optional[BaseException] = None
    timed_out: bool = False


class Attempts:
    """One operation's attempts: each one's timeout, and what follows it."""

    def __init__(self, settings: Settings, key: str, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.key = key
        self.clock = clock
        self.deadline = clock() + settings.deadline
        self.made = 0

    def timeout(self, requested: Timeout) -> Timeout:
        """The next attempt's timeout: the caller's (or the attempt timeout),
        never past the deadline."""
        self.made += 1
        left = max(0.001, self.deadline - self.clock())
        if isinstance(requested, tuple):
            return (min(requested[0], left), min(requested[1], left))
        return min(requested if requested is not None else self.settings.attempt_timeout, left)

    def after(self, result: Result) -> Union[Answer, float]:
        """The final answer, or the seconds to wait before the next attempt;
        raises a refusal, :class:`GaveUp` or :class:`DeadlineExceeded`."""
        retry_after = None
        problem = None
        if result.error is None:
            assert result.headers is not None
            outcome: Outcome = result.status
            problem = problem_slug(result.headers.get("Content-Type", ""), result.body)
            last = f"status {result.status}: {result.body[:300].decode('utf-8', 'replace')}"
            if "Retry-After" in result.headers:
                retry_after = parse_retry_after(result.headers["Retry-After"])
        else:
            outcome = "timeout" if result.timed_out else "connect_error"
            last = f"{'timed out: ' if result.timed_out else ''}{result.error}"
        answer = self._answer(result) if result.error is None else None
        if not classify(outcome, problem):
            assert answer is not None
            refusal = _REFUSALS.get(problem or "") if 400 <= result.status < 500 else None
            if refusal is not None:
                try:
                    detail = str(jsonlib.loads(result.body).get("detail", ""))
                except (ValueError, AttributeError):
                    detail = ""
                raise refusal(self.key, detail, result.status, answer)
            return answer
        if self.made >= self.settings.max_attempts:
            raise GaveUp(self.key, self.made, last, answer, result.error) from result.error
        wait = self.settings.delay(self.made, retry_after)
        if self.clock() + wait >= self.deadline:
            raise DeadlineExceeded(
                self.key, self.made, self.settings.deadline, last, answer, result.error
            ) from result.error
        if self.settings.on_retry is not None:
            self.settings.on_retry(RetryEvent(self.made, wait, last, self.key))
        return wait

    def _answer(self, result: Result) -> Answer:
        headers = result.headers if result.headers is not None else Headers()
        return Answer(
            status=result.status,
            headers=headers,
            body=result.body,
            replayed=headers.get("Idempotent-Replayed", "").lower() == "true",
            key=self.key,
            attempts=self.made,
        )
