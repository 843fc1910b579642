"""The signaling server's handlers, bounds and lifecycle, through aiohttp's test client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from duet.signaling.codes import lookup_key, new_session_id, seal, sealing_key
from duet.signaling.server import CONFIG, REGISTRY, Registry, ServerConfig, app, parser, start_server

SDP = (
    "v=0\r\no=- 1 2 IN IP4 192.168.1.23\r\na=fingerprint:sha-256 AB:CD:EF:01\r\n"
    "a=candidate:1 1 udp 2130706431 192.168.1.23 50000 typ host\r\n"
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class WatchedEvent(asyncio.Event):
    """A pairing's event that tells the test once ``n`` long polls are waiting on it."""

    def __init__(self, n: int = 1) -> None:
        super().__init__()
        self.n = n
        self.waiting: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def wait(self) -> Any:
        self.n -= 1
        if self.n == 0:
            self.waiting.set_result(None)
        return await super().wait()


def watch(registry: Registry, key: str, n: int = 1) -> asyncio.Future[None]:
    event = WatchedEvent(n)
    registry.pending[key].changed = event
    return event.waiting


def run(scenario: Callable[..., Awaitable[None]], **cfg: Any) -> None:
    """Run ``scenario(client, registry)`` against a fresh app on 127.0.0.1, port chosen by the OS."""

    async def main() -> None:
        application = app(**cfg)
        async with TestClient(TestServer(application, host="127.0.0.1", port=0)) as client:
            await scenario(client, application[REGISTRY])

    asyncio.run(main())


def key_of(session_id: str | None = None) -> str:
    return lookup_key(session_id or new_session_id())


def token(role: str = "offer", session_id: str | None = None) -> str:
    return seal(sealing_key(session_id or new_session_id()), role, {"sdp": SDP, "type": role})


async def expect_error(resp: aiohttp.ClientResponse, status: int, words: str = "") -> dict[str, str]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error", "reason"} and isinstance(body["error"], str)
    assert words in body["error"], body
    return body


async def create(client: TestClient[Any, Any], key: str, offer: str | None = None) -> None:
    resp = await client.post("/v1/sessions", json={"key": key, "offer": offer or token()})
    assert resp.status == 201, await resp.text()


def state_text(registry: Registry) -> str:
    """Everything the server holds, as text."""
    parts = [repr(vars(p)) for p in registry.pending.values()]
    return "".join(parts) + repr(registry.tombstones) + repr(registry.per_client)


# -- the pairing flow --------------------------------------------------------------------------------


def test_full_pairing_flow_relays_sealed_tokens_and_forgets(caplog: pytest.LogCaptureFixture) -> None:
    session_id = new_session_id()
    key = lookup_key(session_id)
    offer, answer = token("offer", session_id), token("answer", session_id)

    async def scenario(client: TestClient[Any, Any], registry: Registry) -> None:
        await create(client, key, offer)
        poll = asyncio.create_task(client.get(f"/v1/sessions/{key}/answer", params={"wait": "10"}))
        resp = await client.get(f"/v1/sessions/{key}/offer")
        assert resp.status == 200 and await resp.json() == {"offer": offer}
        resp = await client.post(f"/v1/sessions/{key}/answer", json={"answer": answer})
        assert resp.status == 202
        text = state_text(registry)
        assert answer in text and "fingerprint" not in text and "candidate" not in text
        assert session_id not in text and "192.168" not in text
        resp = await asyncio.wait_for(poll, 5)
        assert resp.status == 200 and await resp.json() == {"answer": answer}
        assert registry.pending == {} and registry.tombstones[key][0] == "used"
        assert answer not in state_text(registry) and offer not in state_text(registry)
        health = await client.get("/healthz")
        assert health.status == 200 and await health.json() == {"status": "ok", "pending": 0}

    with caplog.at_level(logging.INFO, logger="duet.signaling"):
        run(scenario)
    events = [r.getMessage() for r in caplog.records if r.name == "duet.signaling"]
    for event in ("created", "claimed", "answered", "delivered"):
        assert any(m.startswith(f"pairing {key[:8]} {event}") for m in events), events
    logged = "\n".join(events)
    assert key not in logged and offer not in logged and answer not in logged and session_id not in logged


def test_answer_posted_before_the_owner_polls_is_kept_until_fetched() -> None:
    key = key_of()

    async def scenario(client: TestClient[Any, Any], registry: Registry) -> None:
        await create(client, key)
        assert (await client.get(f"/v1/sessions/{key}/offer")).status == 200
        resp = await client.post(f"/v1/sessions/{key}/answer", json={"answer": "abc"})
        assert resp.status == 202
        resp = await client.get(f"/v1/sessions/{key}/answer")  # wait defaults to 0
        assert resp.status == 200 and await resp.json() == {"answer": "abc"}

    run(scenario)


def test_second_fetch_and_second_answer_are_refused_as_used() -> None:
    key = key_of()

    async def scenario(client: TestClient[Any, Any], registry: Registry) -> None:
        await create(client, key)
        assert (await client.get(f"/v1/sessions/{key}/offer")).status == 200
        body = await expect_error(await client.get(f"/v1/sessions/{key}/offer"), 409, "already used")
        assert body["reason"] == "used"
        assert (await client.post(f"/v1/sessions/{key}/answer", json={"answer": "a1"})).status == 202
        await expect_error(
            await client.post(f"/v1/sessions/{key}/answer", json={"answer": "a2"}), 409, "used"
        )
        assert (await client.get(f"/v1/sessions/{key}/answer")).status == 200
        # pairing forgotten; the tombstone still says why
        await expect_error(await client.get(f"/v1/sessions/{key}/offer"), 409, "already used")
        await expect_error(await client.get(f"/v1/sessions/{key}/answer"), 409, "already used")
        await expect_error(await client.post("/v1/sessions", json={"key": key, "offer": "x"}), 409, "exists")

    run(scenario)


def test_unknown_key_duplicate_key_and_answer_before_claim() -> None:
    key = key_of()

    async def scenario(client: TestClient[Any, Any], registry: Registry) -> None:
        unknown = key_of()
        await expect_error(
            await client.get(f"/v1/sessions/{unknown}/offer"), 404, "check it was copied whole"
        )
        await expect_error(await client.get(f"/v1/sessions/{unknown}/answer"), 404, "no session with this ID")
        await expect_error(await client.post(f"/v1/sessions/{unknown}/answer", json={"answer": "a"}), 404)
        await create(client, key)
        await expect_error(await client.post("/v1/sessions", json={"key": key, "offer": "y"}), 409, "exists")
        body = await expect_error(await client.post(f"/v1/sessions/{key}/answer", json={"answer": "a"}), 409)
        assert body["reason"] == "not_claimed"

    run(scenario)


# -- expiry, cancel, long polls --------------------------------------------------------------------


def test_expired_pairing_gives_410_to_scientist_and_owner() -> None:
    clock = Clock()
    first, second = key_of(), key_of()

    async def scenario(client: TestClient[Any, Any], registry: Registry) -> None:
        await create(client, first)
        await create(client, second)
        clock.now += 59.9
        assert registry.live(first) is registry.pending[first]
        clock.now += 0.1
        await expect_error(await client.get(f"/v1/sessions/{first}/offer"), 410, "expired")
        await expect_error(
            await client.get(f"/v1/sessions/{second}/answer", params={"wait": "5"}), 410, "expired"
        )
        assert registry.pending == {} and registry.per_client == {}

    run(scenario, ttl=60, clock=clock)


def test_sweep_expires_pairings_and_wakes_the_owners_long_poll() -> None:
    clock = Clock()
    key = key_of()

    async def scenario(client: TestClient[Any, Any], registry: Registry) -> None:
        await create(client, key)
        waiting = watch(registry, key)
        poll = asyncio.create_task(client.get(f"/v1/sessions/{key}/answer", params={"wait": "20"}))
        await asyncio.wait_for(waiting, 5)  # the poll is parked on the server
        clock.now += 61
        registry.sweep()
        assert key not in registry.pending
        await expect_error(await asyncio.wait_for(poll, 5), 410, "expired")
        await expect_error(await client.get(f"/v1/sessions/{key}/offer"), 410, "expired")

    run(scenario, ttl=60, clock=clock)


def test_long_poll_ends_when_the_pairing_expires_in_real_time() -> None:
    key = key_of()

    async def scenario(client: TestClient[Any, Any], registry: Registry) -> None:
        await create(client, key)
        resp = await asyncio.wait_for(client.get(f"/v1/sessions/{key}/answer", params={"wait": "20"}), 5)
        await expect_error(resp, 410, "expired")

    run(scenario, ttl=0.3)


def test_long_poll_returns_204_after_its_wait_and_wait_is_capped() -> None:
    key = key_of()

    async def scenario(client: TestClient[Any, Any], registry: Registry) -> None:
        await create(client, key)
        resp = await asyncio.wait_for(client.get(f"/v1/sessions/{key}/answer", params={"wait": "0.05"}), 5)
        assert resp.status == 204 and await resp.read() == b""
        resp = await asyncio.wait_for(client.get(f"/v1/sessions/{key}/answer", params={"wait": "999"}), 5)
        assert resp.status == 204  # capped at max_wait=0.2
        assert registry.pending[key].waiters == 0

    run(scenario, max_wait=0.2)


def test_cancel_wakes_the_long_poll_and_the_id_reads_as_cancelled() -> None:
    key = key_of()

    async def scenario(client: TestClient[Any, Any], registry: Registry) -> None:
        await create(client, key)
        waiting = watch(registry, key)
        poll = asyncio.create_task(client.get(f"/v1/sessions/{key}/answer", params={"wait": "20"}))
        await asyncio.wait_for(waiting, 5)
        assert (await client.delete(f"/v1/sessions/{key}")).status == 204
        await expect_error(await asyncio.wait_for(poll, 5), 410, "cancelled")
        await expect_error(await client.get(f"/v1/sessions/{key}/offer"), 410, "cancelled")
        assert (await client.delete(f"/v1/sessions/{key}")).status == 204  # idempotent
        assert registry.pending == {} and registry.per_client == {}

    run(scenario)


def test_concurrent_long_polls_on_one_pairing_are_bounded() -> None:
    key = key_of()

    async def scenario(client: TestClient[Any, Any], registry: Registry) -> None:
        await create(client, key)
        waiting = watch(registry, key, 4)
        polls = [
            asyncio.create_task(client.get(f"/v1/sessions/{key}/answer", params={"wait": "20"}))
            for _ in range(4)
        ]
        await asyncio.wait_for(waiting, 5)
        await expect_error(await client.get(f"/v1/sessions/{key}/answer", params={"wait": "20"}), 429)
        assert (await client.get(f"/v1/sessions/{key}/offer")).status == 200
        assert (await client.post(f"/v1/sessions/{key}/answer", json={"answer": "ans"})).status == 202
        for resp in await asyncio.wait_for(asyncio.gather(*polls), 5):
            assert resp.status == 200 and await resp.json() == {"answer": "ans"}

    run(scenario)


# -- malformed input and bounds ----------------------------------------------------------------------

GOOD_KEY = "ab" * 32
BAD_REQUESTS = [
    ("POST", "/v1/sessions", b"{not json", 400),
    ("POST", "/v1/sessions", b"", 400),
    ("POST", "/v1/sessions", b"[1, 2]", 400),
    ("POST", "/v1/sessions", b'"text"', 400),
    ("POST", "/v1/sessions", b"\xff\xfe\x00", 400),
    ("POST", "/v1/sessions", b'{"key": 5, "offer": "abc"}', 400),
    ("POST", "/v1/sessions", b'{"key": "' + b"AB" * 32 + b'", "offer": "abc"}', 400),
    ("POST", "/v1/sessions", b'{"key": "' + b"ab" * 31 + b'", "offer": "abc"}', 400),
    ("POST", "/v1/sessions", b'{"key": "' + GOOD_KEY.encode() + b'", "offer": 7}', 400),
    ("POST", "/v1/sessions", b'{"key": "' + GOOD_KEY.encode() + b'", "offer": ""}', 400),
    ("POST", "/v1/sessions", b'{"key": "' + GOOD_KEY.encode() + b'", "offer": "a b"}', 400),
    ("POST", "/v1/sessions", b'{"key": "' + GOOD_KEY.encode() + b'", "offer": "x", "extra": 1}', 400),
    ("POST", "/v1/sessions", b'{"key": "' + GOOD_KEY.encode() + b'"}', 400),
    ("POST", "/v1/sessions", b"[" * 100_000, 413),
    ("POST", "/v1/sessions", b"[" * 50_000 + b"]" * 50_000, 413),
    ("POST", "/v1/sessions", b"[" * 30_000 + b"]" * 30_000, 400),
    ("GET", "/v1/sessions/nothex/offer", b"", 400),
    ("GET", "/v1/sessions/" + "a" * 65 + "/offer", b"", 400),
    ("GET", f"/v1/sessions/{GOOD_KEY}/answer?wait=-1", b"", 400),
    ("GET", f"/v1/sessions/{GOOD_KEY}/answer?wait=nan", b"", 400),
    ("GET", f"/v1/sessions/{GOOD_KEY}/answer?wait=1e9", b"", 400),
    ("GET", f"/v1/sessions/{GOOD_KEY}/answer?wait=1&x=2", b"", 400),
    ("POST", f"/v1/sessions/{GOOD_KEY}/answer", b'{"answer": ["x"]}', 400),
    ("DELETE", "/v1/sessions/ZZ", b"", 400),
    ("GET", "/v1/nowhere", b"", 404),
    ("GET", "/", b"", 404),
    ("PUT", "/v1/sessions", b"{}", 405),
    ("GET", "/v1/sessions", b"", 405),
    ("HEAD", f"/v1/sessions/{GOOD_KEY}/offer", b"", 405),
]


def test_malformed_requests_get_4xx_json_and_never_5xx() -> None:
    async def scenario(client: TestClient[Any, Any], registry: Registry) -> None:
        for method, path, body, status in BAD_REQUESTS:
            resp = await client.request(method, path, data=body)
            assert resp.status == status, (method, path, body[:40], resp.status, await resp.text())
            if method != "HEAD":
                await expect_error(resp, status)
            if status == 405:
                assert "Allow" in resp.headers
        assert registry.pending == {}
        assert (await client.get("/healthz")).status == 200

    run(scenario)


def test_oversized_body_and_token() -> None:
    async def scenario(client: TestClient[Any, Any], registry: Registry) -> None:
        huge = {"key": GOOD_KEY, "offer": "a" * 70_000}
        await expect_error(await client.post("/v1/sessions", json=huge), 413, "too large")
        long_token = {"key": GOOD_KEY, "offer": "a" * 2_001}
        await expect_error(await client.post("/v1/sessions", json=long_token), 400, "sealed token")
        assert registry.pending == {}

    run(scenario, max_token=2_000)


def test_per_client_flood_gets_429_then_recovers() -> None:
    async def scenario(client: TestClient[Any, Any], registry: Registry) -> None:
        keys = [key_of() for _ in range(4)]
        for key in keys[:3]:
            await create(client, key)
        await expect_error(await client.post("/v1/sessions", json={"key": keys[3], "offer": "x"}), 429)
        health = await client.get("/healthz")
        assert health.status == 200 and (await health.json())["pending"] == 3
        assert (await client.delete(f"/v1/sessions/{keys[0]}")).status == 204
        await create(client, keys[3])

    run(scenario, max_per_client=3)


def test_total_flood_gets_429_full_never_5xx_and_health_still_answers() -> None:
    async def scenario(client: TestClient[Any, Any], registry: Registry) -> None:
        for _ in range(5):
            await create(client, key_of())
        for _ in range(20):
            body = await expect_error(
                await client.post("/v1/sessions", json={"key": key_of(), "offer": "x"}), 429
            )
            assert body["reason"] == "full" and "server full" in body["error"]
        health = await client.get("/healthz")
        assert health.status == 200 and await health.json() == {"status": "ok", "pending": 5}

    run(scenario, max_pending=5, max_per_client=100)


def test_tombstones_are_bounded_and_age_out() -> None:
    clock = Clock()

    async def scenario(client: TestClient[Any, Any], registry: Registry) -> None:
        keys = [key_of() for _ in range(5)]
        for key in keys:
            await create(client, key)
            assert (await client.delete(f"/v1/sessions/{key}")).status == 204
        assert list(registry.tombstones) == keys[2:]
        await expect_error(await client.get(f"/v1/sessions/{keys[0]}/offer"), 404)
        await expect_error(await client.get(f"/v1/sessions/{keys[4]}/offer"), 410, "cancelled")
        clock.now += 100
        await expect_error(await client.get(f"/v1/sessions/{keys[4]}/offer"), 404)
        registry.sweep()
        assert not registry.tombstones

    run(scenario, clock=clock, max_tombstones=3, tombstone_ttl=100)


def test_unused_ids_expire_after_10_minutes_by_default() -> None:
    assert ServerConfig().ttl == 600.0
    assert app()[CONFIG].ttl == 600.0
    assert parser().parse_args([]).ttl == 600.0  # the command line's default
    assert parser().parse_args(["--ttl", "90"]).ttl == 90.0


def test_expired_and_cancelled_pairings_are_logged_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    ids = {why: new_session_id() for why in ("swept", "touched", "cancelled")}
    keys = {why: key_of(sid) for why, sid in ids.items()}
    offers = {why: token("offer", sid) for why, sid in ids.items()}

    async def scenario(client: TestClient[Any, Any], registry: Registry) -> None:
        for why in ids:
            await create(client, keys[why], offers[why])
        assert (await client.delete(f"/v1/sessions/{keys['cancelled']}")).status == 204
        clock.now += 61
        await expect_error(await client.get(f"/v1/sessions/{keys['touched']}/offer"), 410, "expired")
        registry.sweep()
        assert registry.pending == {}

    with caplog.at_level(logging.INFO, logger="duet.signaling"):
        run(scenario, ttl=60, clock=clock)
    events = [r.getMessage() for r in caplog.records if r.name == "duet.signaling"]
    ended = [m for m in events if m.endswith((" expired", " cancelled"))]
    assert sorted(ended) == sorted(
        [
            f"pairing {keys['swept'][:8]} expired",
            f"pairing {keys['touched'][:8]} expired",
            f"pairing {keys['cancelled'][:8]} cancelled",
        ]
    ), events
    logged = "\n".join(events)
    for why, sid in ids.items():
        secret = sealing_key(sid)
        assert sid not in logged and keys[why] not in logged and offers[why] not in logged
        assert secret.hex() not in logged and keys[why][8:16] not in logged


def test_config_is_validated() -> None:
    for bad in ({"ttl": 0}, {"ttl": float("nan")}, {"max_pending": 0}, {"max_wait": -1}):
        with pytest.raises(ValueError):
            app(**bad)


# -- lifecycle ---------------------------------------------------------------------------------------


def test_start_server_binds_a_free_port_and_shutdown_ends_long_polls() -> None:
    async def main() -> None:
        runner, port = await start_server("127.0.0.1", 0, max_wait=60)
        key = key_of()
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/sessions", json={"key": key, "offer": "abc"}) as resp:
                assert resp.status == 201
            waiting = watch(runner.app[REGISTRY], key)
            poll = asyncio.create_task(http.get(f"{base}/v1/sessions/{key}/answer", params={"wait": "60"}))
            await asyncio.wait_for(waiting, 5)
            await asyncio.wait_for(runner.cleanup(), 5)
            resp = await asyncio.wait_for(poll, 5)
            assert resp.status == 503
            resp.release()

    asyncio.run(main())


def test_main_refuses_bad_settings() -> None:
    from duet.signaling.server import main

    with pytest.raises(SystemExit) as info:
        main(["--ttl", "0"])
    assert info.value.code == 2
