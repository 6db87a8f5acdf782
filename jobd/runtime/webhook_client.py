"""The webhook dispatcher's HTTP client, chosen by ``webhooks.fast_client``: the
hand-written :class:`~jobd.runtime.poster.Poster` (true, the default) or aiohttp's client
(false). Both have one method, ``post``, and the same behaviour where it matters: no
redirects, no proxies, every address checked, ``timeout_s`` for the whole request, the
first ``read_limit`` bytes of the answer kept, the bounds of :mod:`jobd.outbound`, and
idle connections closed after :data:`~jobd.outbound.IDLE_S`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

import aiohttp

from jobd import netguard
from jobd.outbound import IDLE_S, client_session
from jobd.runtime.poster import AnswerError, Poster


class WebhookClient(Protocol):
    async def post(self, url: str, body: bytes, headers: Iterable[tuple[str, str]], *,
                   timeout_s: float, read_limit: int) -> tuple[int, bytes]:
        """POST ``body``; return the status and up to ``read_limit`` bytes of the answer."""
        ...

    async def close(self) -> None: ...


def webhook_client(*, fast: bool, allow_private: bool) -> WebhookClient:
    if fast:
        return Poster(allow_private=allow_private)
    return SessionPoster(allow_private=allow_private)


class SessionPoster:
    """:class:`~jobd.runtime.poster.Poster`'s interface on aiohttp's client. Errors are
    the poster's kinds, and say nothing of the URL (aiohttp's name it, credentials too)."""

    def __init__(self, *, allow_private: bool, max_idle_s: float = IDLE_S) -> None:
        self._allow_private = allow_private
        self._max_idle_s = max_idle_s
        self._session: aiohttp.ClientSession | None = None  # made in the running loop

    async def post(self, url: str, body: bytes, headers: Iterable[tuple[str, str]], *,
                   timeout_s: float, read_limit: int) -> tuple[int, bytes]:
        if self._session is None:
            self._session = client_session(self._allow_private, idle_s=self._max_idle_s)
        session, sent = self._session, list(headers)
        timeout = aiohttp.ClientTimeout(total=timeout_s)

        async def attempt() -> tuple[int, bytes]:
            async with session.post(url, data=body, headers=sent, allow_redirects=False,
                                    timeout=timeout) as resp:
                return resp.status, await netguard.read_capped(resp, read_limit)

        try:
            async with asyncio.timeout(timeout_s):  # both attempts together, as the poster
                try:
                    return await attempt()
                except aiohttp.ServerDisconnectedError:
                    # hung up with no answer, as a receiver may on a connection it had
                    # idle: once more, as the poster does (receivers de-duplicate on
                    # webhook-id)
                    return await attempt()
        except aiohttp.ClientResponseError as exc:  # aiohttp could not parse the answer
            raise AnswerError(f"malformed HTTP answer: {exc.message}") from None
        except aiohttp.ServerDisconnectedError:
            raise AnswerError("the connection closed before an answer") from None
        except aiohttp.InvalidURL:
            raise ValueError("not a URL this client can send to") from None
        except TimeoutError:  # aiohttp's own carry the URL
            raise TimeoutError() from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
