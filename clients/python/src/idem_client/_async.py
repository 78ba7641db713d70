"""The asyncio client on ``httpx`` (``pip install idem-client[async]``)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Optional

import httpx

from ._core import Answer, Attempts, Headers, Result, Settings, request_parts


@dataclass
class AsyncIdempotentClient(Settings):
    """The retrying client for asyncio: the same behaviour as
    :class:`IdempotentClient`, on an ``httpx.AsyncClient`` (supply one to
    share its pool). ``timeout`` bounds each attempt, ``deadline`` the whole
    call::

        async with AsyncIdempotentClient() as client:
            answer = await client.post(url, json={"amount": 42.5})
    """

    http: httpx.AsyncClient = field(default_factory=httpx.AsyncClient)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic

    async def __aenter__(self) -> "AsyncIdempotentClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the client's connections."""
        await self.http.aclose()

    async def post(self, url: str, json: Any = None, data: Any = None, **kwargs: Any) -> Answer:
        """One POST operation; see :meth:`request`."""
        return await self.request("POST", url, json=json, data=data, **kwargs)

    async def patch(self, url: str, json: Any = None, data: Any = None, **kwargs: Any) -> Answer:
        """One PATCH operation; see :meth:`request`."""
        return await self.request("PATCH", url, json=json, data=data, **kwargs)

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        data: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        key: Optional[str] = None,
        **kwargs: Any,
    ) -> Answer:
        """Sends one logical operation, retrying with the same key until a
        final answer, a refusal (a typed exception), or the limits (GaveUp,
        DeadlineExceeded: both carry the key to retry with later). Other
        keyword arguments (``params``, ``auth``, ``cookies``...) go to
        ``httpx``."""
        key = key or self.key_for(json, data)
        body, sent = request_parts(key, json, data, headers)
        if isinstance(body, str):
            body = body.encode("utf-8")
        attempts = Attempts(self, key, self.clock)
        while True:
            limit = attempts.timeout(timeout)
            # A number in, a number out: httpx takes no (connect, read) pair.
            assert not isinstance(limit, tuple)
            try:
                if isinstance(body, (bytes, bytearray)):
                    res = await self.http.request(method, url, content=bytes(body), headers=sent, timeout=limit, **kwargs)
                else:
                    res = await self.http.request(method, url, data=body, headers=sent, timeout=limit, **kwargs)
                result = Result(res.status_code, Headers(dict(res.headers.items())), res.content)
            except httpx.TimeoutException as e:
                result = Result(error=e, timed_out=True)
            except httpx.TransportError as e:
                result = Result(error=e)
            next_step = attempts.after(result)
            if isinstance(next_step, Answer):
                return next_step
            await self.sleep(next_step)
