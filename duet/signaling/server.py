"""The signaling server: pairs owner and scientist by lookup key and relays their sealed offer and answer.

Protocol (JSON; every error body is ``{"error": <what to do>, "reason": <code>}``)::

    POST   /v1/sessions              {"key", "offer"}   201  owner publishes its sealed offer
    GET    /v1/sessions/{key}/offer                     200  {"offer"}: scientist claims it, once
    POST   /v1/sessions/{key}/answer {"answer"}         202  scientist answers, once, after claiming
    GET    /v1/sessions/{key}/answer?wait=SECONDS       200  {"answer"} and the pairing is forgotten,
                                                        204  nothing yet (long poll; the owner retries)
    DELETE /v1/sessions/{key}                           204  owner cancels
    GET    /healthz                                     200  {"status": "ok", "pending": n}

    400 malformed request    404 unknown ID or route    405 wrong method    409 used, exists or not claimed
    410 expired or cancelled    413 body too large    429 too many pending (reason "too_many": from this
    address, "full": in total)    503 stopping (the server is shutting down)

The server sees only lookup keys (a hash of the session ID) and sealed tokens it cannot open. A pairing
ends when its answer is delivered, when it expires or when the owner cancels it; a bounded tombstone
(key, why, when) remains, so a late scientist hears "already used" or "expired" rather than "wrong ID".
Every safety bound is in :class:`ServerConfig`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import re
import signal
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .codes import MAX_TOKEN_CHARS

__all__ = ["ServerConfig", "Registry", "CONFIG", "REGISTRY", "app", "start_server", "parser", "main"]

log = logging.getLogger("duet.signaling")

_KEY_RE = re.compile(r"[0-9a-f]{64}|[0-9a-f]{128}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")
_WAIT_RE = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")
_MAX_WAITERS = 4  # concurrent long polls on one pairing


@dataclass(frozen=True)
class ServerConfig:
    """Every bound the server enforces, in one place."""

    ttl: float = 600.0  # seconds an unused pairing lives
    max_pending: int = 10_000  # pairings alive at once, in total
    max_per_client: int = 32  # pairings alive at once, per client address
    max_body: int = 64 * 1024  # bytes in one request body
    max_wait: float = 30.0  # longest long poll, seconds
    max_token: int = MAX_TOKEN_CHARS  # characters in one sealed offer or answer
    answer_grace: float = 60.0  # once claimed, the answer may come this long (capped by ttl) after claim
    max_tombstones: int = 100_000  # used/expired/cancelled keys remembered
    tombstone_ttl: float = 3600.0  # seconds a tombstone is remembered

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, not {value!r}")


class Refusal(Exception):
    """A request the server answers with a 4xx/5xx JSON error."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


_GONE = {  # why a key has no pending pairing -> status, message
    "unknown": (404, "no session with this ID: check it was copied whole"),
    "used": (409, "this session ID was already used: ask the owner for a new one"),
    "expired": (410, "this session ID has expired: ask the owner to start a new session"),
    "cancelled": (410, "the owner cancelled this session"),
}


def _gone(why: str) -> Refusal:
    status, message = _GONE[why]
    return Refusal(status, why, message)


@dataclass(eq=False)
class Pairing:
    """One owner waiting for one scientist. Holds only the lookup key and sealed tokens."""

    key: str
    offer: str
    client: str
    expires: float
    claimed: bool = False
    answer: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: int = 0


class Registry:
    """The pending pairings, the tombstones and the per-client counts; time comes from ``clock``."""

    def __init__(self, config: ServerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.pending: dict[str, Pairing] = {}
        self.tombstones: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.per_client: Counter[str] = Counter()
        self.closing = False

    def create(self, key: str, offer: str, client: str) -> None:
        if key in self.pending or self._tombstone(key) is not None:
            raise Refusal(409, "exists", "a session with this ID already exists: start a new session")
        if self.per_client[client] >= self.config.max_per_client:
            raise Refusal(429, "too_many", "too many pending sessions from this address: let some expire")
        if len(self.pending) >= self.config.max_pending:
            raise Refusal(429, "full", "server full: too many pending sessions, try again later")
        self.pending[key] = Pairing(key, offer, client, self.clock() + self.config.ttl)
        self.per_client[client] += 1
        log.info("pairing %s created (from %s)", key[:8], client)

    def live(self, key: str) -> Pairing:
        """The pending pairing for ``key``; a :class:`Refusal` saying why there is none."""
        pairing = self.pending.get(key)
        if pairing is not None and self.clock() >= pairing.expires:
            self.end(pairing, "expired")
            pairing = None
        if pairing is None:
            raise _gone(self._tombstone(key) or "unknown")
        return pairing

    def claim(self, pairing: Pairing) -> str:
        if pairing.claimed:
            raise _gone("used")
        offer, pairing.offer, pairing.claimed = pairing.offer, "", True
        grace = min(self.config.ttl, self.config.answer_grace)
        pairing.expires = max(pairing.expires, self.clock() + grace)
        log.info("pairing %s claimed", pairing.key[:8])
        return offer

    def post_answer(self, pairing: Pairing, answer: str) -> None:
        if not pairing.claimed:
            raise Refusal(409, "not_claimed", "this session's offer was not fetched yet: fetch it first")
        if pairing.answer is not None:
            raise _gone("used")
        pairing.answer = answer
        pairing.changed.set()
        log.info("pairing %s answered", pairing.key[:8])

    def delivered(self, pairing: Pairing) -> None:
        """The owner has the answer: forget the pairing (single use)."""
        if self.pending.get(pairing.key) is pairing:
            self.end(pairing, "used")
            log.info("pairing %s delivered", pairing.key[:8])

    def end(self, pairing: Pairing, why: str) -> None:
        """Forget ``pairing``, wake its long polls, and keep a tombstone saying ``why``."""
        if self.pending.pop(pairing.key, None) is not pairing:
            return
        self.per_client[pairing.client] -= 1
        if self.per_client[pairing.client] <= 0:
            del self.per_client[pairing.client]
        pairing.offer = ""
        pairing.changed.set()
        self.tombstones[pairing.key] = (why, self.clock())
        self.tombstones.move_to_end(pairing.key)
        while len(self.tombstones) > self.config.max_tombstones:
            self.tombstones.popitem(last=False)
        if why != "used":
            log.info("pairing %s %s", pairing.key[:8], why)

    def _tombstone(self, key: str) -> str | None:
        why, when = self.tombstones.get(key, (None, 0.0))
        return why if self.clock() - when < self.config.tombstone_ttl else None

    def sweep(self) -> None:
        """Expire overdue pairings and drop old tombstones (they are in time order)."""
        now = self.clock()
        for pairing in [p for p in self.pending.values() if now >= p.expires]:
            self.end(pairing, "expired")
        while self.tombstones and now - next(iter(self.tombstones.values()))[1] >= self.config.tombstone_ttl:
            self.tombstones.popitem(last=False)

    def close(self) -> None:
        """Wake every long poll so the server can stop at once."""
        self.closing = True
        for pairing in self.pending.values():
            pairing.changed.set()


CONFIG = web.AppKey("config", ServerConfig)
REGISTRY = web.AppKey("registry", Registry)


# -- request parsing -------------------------------------------------------------------------------


def _key(value: object) -> str:
    if not isinstance(value, str) or not _KEY_RE.fullmatch(value):
        raise Refusal(400, "bad_request", "key must be 64 or 128 lowercase hex characters")
    return value


def _token(value: object, name: str, limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit or not _TOKEN_RE.fullmatch(value):
        raise Refusal(400, "bad_request", f"{name} must be a sealed token (url-safe base64, <= {limit})")
    return value


async def _body(request: web.Request, fields: set[str]) -> dict[str, Any]:
    raw = await request.read()  # raises 413 past client_max_size
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refusal(400, "bad_request", "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise Refusal(400, "bad_request", "the request body must be a JSON object")
    if set(body) != fields:
        unknown, missing = sorted(set(body) - fields), sorted(fields - set(body))
        raise Refusal(400, "bad_request", f"unknown fields {unknown}, missing fields {missing}")
    return body


def _wait(request: web.Request, cap: float) -> float:
    wait = request.query.get("wait", "0")
    if set(request.query) - {"wait"} or not _WAIT_RE.fullmatch(wait):
        raise Refusal(400, "bad_request", "the only query parameter is wait, a number of seconds >= 0")
    return min(float(wait), cap)


# -- handlers --------------------------------------------------------------------------------------


async def _create(request: web.Request) -> web.Response:
    config, registry = request.app[CONFIG], request.app[REGISTRY]
    body = await _body(request, {"key", "offer"})
    key, offer = _key(body["key"]), _token(body["offer"], "offer", config.max_token)
    registry.create(key, offer, request.remote or "unknown")
    return web.json_response({"expires_in": config.ttl}, status=201)


async def _fetch_offer(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    pairing = registry.live(_key(request.match_info["key"]))
    return web.json_response({"offer": registry.claim(pairing)})


async def _post_answer(request: web.Request) -> web.Response:
    config, registry = request.app[CONFIG], request.app[REGISTRY]
    key = _key(request.match_info["key"])
    body = await _body(request, {"answer"})
    answer = _token(body["answer"], "answer", config.max_token)
    registry.post_answer(registry.live(key), answer)
    return web.json_response({"status": "accepted"}, status=202)


async def _wait_answer(request: web.Request) -> web.StreamResponse:
    config, registry = request.app[CONFIG], request.app[REGISTRY]
    key = _key(request.match_info["key"])
    wait = _wait(request, config.max_wait)
    pairing = registry.live(key)
    if pairing.answer is None:
        if pairing.waiters >= _MAX_WAITERS:
            raise Refusal(429, "too_many", "too many long polls on this session")
        pairing.waiters += 1
        try:
            timeout = min(wait, pairing.expires - registry.clock())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pairing.changed.wait(), max(timeout, 0.0))
        finally:
            pairing.waiters -= 1
    if pairing.answer is not None:
        registry.delivered(pairing)
        return web.json_response({"answer": pairing.answer})
    if registry.closing:
        raise Refusal(503, "stopping", "the signaling server is shutting down")
    registry.live(key)  # 410 if it expired or was cancelled meanwhile
    return web.Response(status=204)


async def _cancel(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    pairing = registry.pending.get(_key(request.match_info["key"]))
    if pairing is not None:
        registry.end(pairing, "cancelled")
    return web.Response(status=204)


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pending": len(request.app[REGISTRY].pending)})


# -- errors, lifecycle, factory --------------------------------------------------------------------

_HTTP_ERRORS = {
    404: ("not_found", "no such endpoint (this server speaks duet signaling /v1)"),
    405: ("method_not_allowed", "method not allowed on this endpoint"),
    413: ("too_large", "request body too large"),
}


def _error(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message, "reason": reason}, status=status, headers=headers)


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every error into a JSON body; client mistakes are never a 5xx."""
    try:
        return await handler(request)
    except Refusal as exc:
        return _error(exc.status, exc.reason, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason, message = _HTTP_ERRORS.get(exc.status, ("bad_request", exc.reason))
        if exc.status == 413:
            message = f"request body too large (at most {request.client_max_size} bytes)"
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _error(exc.status, reason, message, allow)
    except Exception:
        route = request.match_info.route.resource
        log.exception("internal error on %s %s", request.method, route.canonical if route else "?")
        return _error(500, "internal", "internal server error")


async def _sweep_forever(registry: Registry, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            registry.sweep()
        except Exception:
            log.exception("expiry sweep failed")


async def _expiry(application: web.Application) -> AsyncIterator[None]:
    registry = application[REGISTRY]
    interval = max(0.05, min(registry.config.ttl / 4, 10.0))
    task = asyncio.create_task(_sweep_forever(registry, interval), name="duet-signaling-expiry")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _on_shutdown(application: web.Application) -> None:
    application[REGISTRY].close()


def app(
    *,
    ttl: float = ServerConfig.ttl,
    max_pending: int = 10_000,
    max_per_client: int = 32,
    max_body: int = 64 * 1024,
    max_wait: float = 30,
    clock: Callable[[], float] = time.monotonic,
    **more: Any,
) -> web.Application:
    """The signaling server as an aiohttp application (``more``: the other :class:`ServerConfig` fields)."""
    limits = {"max_pending": max_pending, "max_per_client": max_per_client, "max_body": max_body}
    config = ServerConfig(ttl=ttl, max_wait=max_wait, **limits, **more)
    application = web.Application(client_max_size=config.max_body, middlewares=[_json_errors])
    application[CONFIG] = config
    application[REGISTRY] = Registry(config, clock)
    application.cleanup_ctx.append(_expiry)
    application.on_shutdown.append(_on_shutdown)
    application.router.add_post("/v1/sessions", _create)
    application.router.add_get("/v1/sessions/{key}/offer", _fetch_offer, allow_head=False)
    application.router.add_post("/v1/sessions/{key}/answer", _post_answer)
    application.router.add_get("/v1/sessions/{key}/answer", _wait_answer, allow_head=False)
    application.router.add_delete("/v1/sessions/{key}", _cancel)
    application.router.add_get("/healthz", _health)
    return application


async def start_server(host: str = "127.0.0.1", port: int = 0, **cfg: Any) -> tuple[web.AppRunner, int]:
    """Start the server (``cfg``: keywords of :func:`app`); its runner (to ``cleanup()``) and bound port."""
    runner = web.AppRunner(app(**cfg), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


async def _serve(host: str, port: int, cfg: dict[str, Any]) -> None:
    runner, bound = await start_server(host, port, **cfg)
    log.info("duet signaling server listening on http://%s:%d", host, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()


def parser() -> argparse.ArgumentParser:
    """The command line of ``duet-signaling`` (and ``python signaling_server.py``)."""
    env = os.environ.get
    description = "The duet signaling server (defaults from env DUET_SIGNALING_HOST, DUET_SIGNALING_PORT)."
    cli = argparse.ArgumentParser(prog="duet-signaling", description=description)
    cli.add_argument("--host", default=env("DUET_SIGNALING_HOST", "127.0.0.1"), help="address to listen on")
    cli.add_argument("--port", type=int, default=env("DUET_SIGNALING_PORT", "8765"), help="0: any free")
    cli.add_argument("--ttl", type=float, default=ServerConfig.ttl, help="seconds an unused session ID lives")
    cli.add_argument("--max-pending", type=int, default=ServerConfig.max_pending, help="pending in total")
    cli.add_argument("--max-per-client", type=int, default=ServerConfig.max_per_client, help="per address")
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (``duet-signaling``, ``python signaling_server.py``)."""
    cli = parser()
    args = cli.parse_args(argv)
    cfg = {"ttl": args.ttl, "max_pending": args.max_pending, "max_per_client": args.max_per_client}
    try:
        ServerConfig(**cfg)
    except ValueError as exc:
        cli.error(str(exc))
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(args.host, args.port, cfg))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
