"""The signaling client both peers use to meet: HTTP calls to one server, every failure a SignalingError.

Owner: ``create(key, offer)``, then ``wait_answer(key, timeout=...)`` (or ``cancel(key)``). Scientist:
``fetch_offer(key)``, then ``post_answer(key, answer)``. Keys come from :func:`.codes.lookup_key` and
tokens from :func:`.codes.seal`; this module neither sees nor needs the session ID.
The client talks only to the URL it was given: no redirects, no proxies from the environment, no cookies.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from types import TracebackType
from typing import Any

import aiohttp
import yarl

from ..errors import SignalingError
from .codes import MAX_TOKEN_CHARS

__all__ = ["SignalingClient"]

_KEY_RE = re.compile(r"[0-9a-f]{64}|[0-9a-f]{128}")
_LONG_POLL = 25.0  # seconds one long poll asks the server to wait (it may cap it lower)
_MAX_RESPONSE = 256 * 1024
_HEALTH_TIMEOUT = 3.0

_NEW_ID = "ask the owner for a new session ID"
_MESSAGES: dict[tuple[str, int | str], str] = {
    # (operation or "*", HTTP status or the server's reason code) -> what happened and what to do
    ("*", 404): "no session with this ID on the signaling server at {url}: check the ID was copied whole "
    "and that both sides use the same signaling server",
    ("wait_answer", 404): "the signaling server at {url} no longer knows this session (was it restarted?): "
    "start a new session",
    ("*", 409): f"this session ID was already used (each ID pairs one scientist, once): {_NEW_ID}",
    ("create", 409): "the signaling server at {url} already has a session with this ID: start a new session",
    ("*", "not_claimed"): "the signaling server at {url} says this session's offer was not fetched yet",
    ("*", 410): f"this session ID has expired (unused IDs expire after 10 minutes by default): {_NEW_ID}",
    ("wait_answer", 410): "the session expired before a scientist joined: start a new one with launch_duet()",
    ("*", "cancelled"): f"the owner cancelled this session: {_NEW_ID}",
    ("wait_answer", "cancelled"): "this session was cancelled: start a new one with launch_duet()",
    ("*", 413): "the signaling server at {url} refused the request as too large",
    ("*", 429): "too many pending sessions from this address on the signaling server at {url}: "
    "close unused sessions or wait for them to expire",
    ("*", "full"): "the signaling server at {url} is full (too many pending sessions in total): "
    "try again in a minute, or run your own with `duet-signaling`",
    ("*", 503): "the signaling server at {url} is shutting down or unavailable: try again in a minute, "
    "or run your own with `duet-signaling`",
}


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ValueError("a lookup key is 64 or 128 lowercase hex characters (see codes.lookup_key)")
    return key


def _check_token(token: str, name: str) -> str:
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
        raise ValueError(f"the sealed {name} must be a non-empty string of at most {MAX_TOKEN_CHARS} chars")
    return token


class SignalingClient:
    """A client of the signaling server at ``base_url``; ``timeout`` bounds each request (plus long polls)."""

    def __init__(self, base_url: str, *, timeout: float = 30) -> None:
        url = yarl.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host or url.query_string or url.fragment:
            raise ValueError(f"signaling URL must look like http://host:port, not {base_url!r}")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError("timeout must be a positive number of seconds")
        self.base_url = str(url).rstrip("/")
        self.timeout = float(timeout)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<SignalingClient {self.base_url}{' closed' if self._closed else ''}>"

    async def __aenter__(self) -> SignalingClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the connection pool; idempotent. The client cannot be used afterwards."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- the protocol ------------------------------------------------------------------------------

    async def create(self, key: str, sealed_offer: str) -> None:
        """Owner: publish the sealed offer under ``key``."""
        body = {"key": _check_key(key), "offer": _check_token(sealed_offer, "offer")}
        status, data = await self._call("POST", "/v1/sessions", json_body=body)
        if status != 201:
            raise self._failure("create", status, data)

    async def wait_answer(self, key: str, *, timeout: float | None) -> str:
        """Owner: the scientist's sealed answer, long polling until it comes or ``timeout`` seconds pass."""
        path = f"/v1/sessions/{_check_key(key)}/answer"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (math.inf if timeout is None else timeout)
        while (remaining := deadline - loop.time()) > 0:
            wait = min(remaining, _LONG_POLL)
            status, data = await self._call(
                "GET", path, params={"wait": f"{wait:.3f}"}, timeout=wait + self.timeout
            )
            if status == 200:
                return self._field(data, "answer")
            if status != 204:
                raise self._failure("wait_answer", status, data)
        raise SignalingError(
            f"no scientist joined within {timeout:g} s: share the session ID again, or wait longer"
        )

    async def fetch_offer(self, key: str) -> str:
        """Scientist: claim the owner's sealed offer (a session ID can be claimed once)."""
        status, data = await self._call("GET", f"/v1/sessions/{_check_key(key)}/offer")
        if status != 200:
            raise self._failure("fetch_offer", status, data)
        return self._field(data, "offer")

    async def post_answer(self, key: str, sealed_answer: str) -> None:
        """Scientist: hand the sealed answer to the owner."""
        path = f"/v1/sessions/{_check_key(key)}/answer"
        body = {"answer": _check_token(sealed_answer, "answer")}
        status, data = await self._call("POST", path, json_body=body)
        if status != 202:
            raise self._failure("post_answer", status, data)

    async def cancel(self, key: str) -> None:
        """Owner: withdraw the offer; the ID then reads as cancelled. Cancelling twice is fine."""
        status, data = await self._call("DELETE", f"/v1/sessions/{_check_key(key)}")
        if status not in (204, 404):
            raise self._failure("cancel", status, data)

    async def healthy(self) -> bool:
        """Whether a signaling server answers at the URL (short timeout; never raises SignalingError)."""
        try:
            status, data = await self._call("GET", "/healthz", timeout=min(self.timeout, _HEALTH_TIMEOUT))
        except SignalingError:
            return False
        return status == 200 and data.get("status") == "ok"

    # -- HTTP --------------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("this SignalingClient is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """One request: the status and the JSON object in the body (empty if none)."""
        limit = self.timeout if timeout is None else timeout
        request = self._http().request(
            method,
            self.base_url + path,
            json=json_body,
            params=params,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=limit),
        )
        try:
            async with request as resp:
                status, raw = resp.status, await self._read(resp)
        except asyncio.TimeoutError as exc:
            raise SignalingError(
                f"the signaling server at {self.base_url} did not answer within {limit:g} s: "
                "check the URL and your network, or try again"
            ) from exc
        except aiohttp.ClientConnectionError as exc:
            raise SignalingError(
                f"signaling server unreachable at {self.base_url} ({exc.__class__.__name__}): is it running? "
                "Start one with `duet-signaling` (or `python signaling_server.py`), "
                "or pass signaling_url= / set DUET_SIGNALING_URL to one that is"
            ) from exc
        except aiohttp.ClientError as exc:
            raise SignalingError(f"talking to the signaling server at {self.base_url} failed: {exc}") from exc
        if 300 <= status < 400:
            raise SignalingError(
                f"the signaling server at {self.base_url} answered with a redirect ({status}), which duet "
                "does not follow: pass the final URL as signaling_url"
            )
        return status, self._parse(raw)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        data = bytearray()
        async for chunk in resp.content.iter_any():
            data += chunk
            if len(data) > _MAX_RESPONSE:
                raise SignalingError(f"the signaling server at {self.base_url} sent an oversized response")
        return bytes(data)

    def _parse(self, raw: bytes) -> dict[str, Any]:
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            raise SignalingError(f"{self.base_url} did not answer like a duet signaling server (not JSON)")
        return data

    def _field(self, data: dict[str, Any], name: str) -> str:
        value = data.get(name)
        if not isinstance(value, str) or not 0 < len(value) <= MAX_TOKEN_CHARS:
            raise SignalingError(f"the signaling server at {self.base_url} sent a malformed {name}")
        return value

    def _failure(self, op: str, status: int, data: dict[str, Any]) -> SignalingError:
        """The SignalingError for an error answer, worded by operation and case."""
        reason = data.get("reason") if isinstance(data.get("reason"), str) else ""
        for case in ((op, reason), ("*", reason), (op, status), ("*", status)):
            if case in _MESSAGES:
                return SignalingError(_MESSAGES[case].format(url=self.base_url))
        detail = str(data.get("error", ""))[:200].encode("ascii", "replace").decode("ascii")
        if 400 <= status < 500:
            return SignalingError(
                f"the signaling server at {self.base_url} rejected the request ({status}: {detail}); "
                "are client and server the same duet version?"
            )
        return SignalingError(f"the signaling server at {self.base_url} failed ({status}): try again later")
