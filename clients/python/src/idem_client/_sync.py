"""The client on ``requests``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import requests

from ._core import Answer, Attempts, Headers, Result, Settings, Timeout, request_parts


@dataclass
class IdempotentClient(Settings):
    """The retrying client: one key per operation, sent on every retry.

    Its calls take what ``requests`` takes (``params``, ``auth``,
    ``cookies``, ``verify``, ...) and pass it on; ``timeout`` bounds each
    attempt (seconds, or ``requests``' (connect, read) pair), ``deadline``
    the whole call. Use it as a context manager to close its session::

        with IdempotentClient() as client:
            answer = client.post(url, json={"amount": 42.5})
    """

    session: requests.Session = field(default_factory=requests.Session)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def __enter__(self) -> "IdempotentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the session's connections."""
        self.session.close()

    def post(self, url: str, json: Any = None, data: Any = None, **kwargs: Any) -> Answer:
        """One POST operation; see :meth:`request`."""
        return self.request("POST", url, json=json, data=data, **kwargs)

    def patch(self, url: str, json: Any = None, data: Any = None, **kwargs: Any) -> Answer:
        """One PATCH operation; see :meth:`request`."""
        return self.request("PATCH", url, json=json, data=data, **kwargs)

    def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        data: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Timeout = None,
        key: Optional[str] = None,
        **kwargs: Any,
    ) -> Answer:
        """Sends one logical operation, retrying with the same key until a
        final answer, a refusal (a typed exception), or the limits (GaveUp,
        DeadlineExceeded: both carry the key to retry with later)."""
        key = key or self.key_for(json, data)
        body, sent = request_parts(key, json, data, headers)
        attempts = Attempts(self, key, self.clock)
        while True:
            try:
                res = self.session.request(
                    method, url, data=body, headers=sent, timeout=attempts.timeout(timeout), **kwargs
                )
                result = Result(res.status_code, Headers(res.headers), res.content)
            except requests.Timeout as e:
                result = Result(error=e, timed_out=True)
            except requests.ConnectionError as e:
                result = Result(error=e)
            next_step = attempts.after(result)
            if isinstance(next_step, Answer):
                return next_step
            self.sleep(next_step)
