"""The signaling client against a real server on 127.0.0.1 (port 0), and against misbehaving servers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from duet.errors import SignalingError
from duet.signaling import SignalingClient, lookup_key, new_session_id, seal, sealing_key, unseal
from duet.signaling.server import REGISTRY, Registry, start_server

SDP = "v=0\r\na=fingerprint:sha-256 AB:CD\r\na=candidate:1 1 udp 1 10.0.0.2 5000 typ host\r\n"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


Scenario = Callable[[SignalingClient, SignalingClient, Registry], Awaitable[None]]


def run(scenario: Scenario, **cfg: Any) -> None:
    """``scenario(owner, scientist, registry)`` with two clients of a real server on a free port."""

    async def main() -> None:
        runner, port = await start_server("127.0.0.1", 0, **cfg)
        try:
            url = f"http://127.0.0.1:{port}"
            async with (
                SignalingClient(url, timeout=5) as owner,
                SignalingClient(url + "/", timeout=5) as scientist,
            ):
                await scenario(owner, scientist, runner.app[REGISTRY])
        finally:
            await runner.cleanup()

    asyncio.run(main())


def sealed(session_id: str, role: str) -> str:
    return seal(sealing_key(session_id), role, {"type": role, "sdp": SDP})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the happy path --------------------------------------------------------------------------------


def test_owner_and_scientist_pair_through_the_server() -> None:
    session_id = new_session_id()

    async def scenario(owner: SignalingClient, scientist: SignalingClient, registry: Registry) -> None:
        assert await owner.healthy() and await scientist.healthy()
        key = lookup_key(session_id)
        await owner.create(key, sealed(session_id, "offer"))
        answer_task = asyncio.create_task(owner.wait_answer(key, timeout=10))

        # the scientist has only the ID, typed a little differently
        typed = session_id.upper().replace("-", " ")
        their_key, their_box = lookup_key(typed), sealing_key(typed)
        offer = unseal(their_box, "offer", await scientist.fetch_offer(their_key))
        assert offer == {"type": "offer", "sdp": SDP}
        await scientist.post_answer(their_key, seal(their_box, "answer", {"type": "answer", "sdp": "ok"}))

        answer = unseal(sealing_key(session_id), "answer", await asyncio.wait_for(answer_task, 10))
        assert answer == {"type": "answer", "sdp": "ok"}
        assert registry.pending == {}

    run(scenario)


def test_wait_answer_spans_several_long_polls() -> None:
    session_id = new_session_id()
    key = lookup_key(session_id)

    async def scenario(owner: SignalingClient, scientist: SignalingClient, registry: Registry) -> None:
        await owner.create(key, sealed(session_id, "offer"))
        answer_task = asyncio.create_task(owner.wait_answer(key, timeout=10))
        await scientist.fetch_offer(key)
        # let at least one capped long poll (max_wait=0.05) come back empty before answering
        done, _ = await asyncio.wait({answer_task}, timeout=0.2)
        assert not done
        await scientist.post_answer(key, "the-answer")
        assert await asyncio.wait_for(answer_task, 5) == "the-answer"

    run(scenario, max_wait=0.05)


def test_close_is_idempotent_and_the_client_refuses_reuse() -> None:
    async def main() -> None:
        client = SignalingClient("http://127.0.0.1:9")
        await client.close()  # never opened: fine
        await client.close()
        with pytest.raises(RuntimeError, match="closed"):
            await client.fetch_offer("ab" * 32)
        assert "closed" in repr(client)

    asyncio.run(main())


# -- each error case, worded -----------------------------------------------------------------------


def test_wrong_id_says_check_it_was_copied_whole() -> None:
    async def scenario(owner: SignalingClient, scientist: SignalingClient, registry: Registry) -> None:
        key = lookup_key(new_session_id())
        with pytest.raises(SignalingError, match="no session with this ID.*copied whole") as info:
            await scientist.fetch_offer(key)
        assert scientist.base_url in str(info.value)
        with pytest.raises(SignalingError, match="no session with this ID"):
            await scientist.post_answer(key, "abc")

    run(scenario)


def test_used_id_says_already_used_and_to_ask_for_a_new_one() -> None:
    session_id = new_session_id()
    key = lookup_key(session_id)

    async def scenario(owner: SignalingClient, scientist: SignalingClient, registry: Registry) -> None:
        await owner.create(key, sealed(session_id, "offer"))
        await scientist.fetch_offer(key)
        with pytest.raises(SignalingError, match="already used.*new session ID"):
            await scientist.fetch_offer(key)
        await scientist.post_answer(key, "answer")
        with pytest.raises(SignalingError, match="already used"):
            await scientist.post_answer(key, "answer")
        with pytest.raises(SignalingError, match="already has a session with this ID"):
            await owner.create(key, "again")

    run(scenario)


def test_expired_id_for_scientist_and_owner() -> None:
    clock = Clock()
    a, b = new_session_id(), new_session_id()

    async def scenario(owner: SignalingClient, scientist: SignalingClient, registry: Registry) -> None:
        await owner.create(lookup_key(a), sealed(a, "offer"))
        await owner.create(lookup_key(b), sealed(b, "offer"))
        clock.now += 61
        with pytest.raises(SignalingError, match="expired.*new session ID"):
            await scientist.fetch_offer(lookup_key(a))
        with pytest.raises(SignalingError, match="expired before a scientist joined"):
            await owner.wait_answer(lookup_key(b), timeout=5)

    run(scenario, ttl=60, clock=clock)


def test_cancelled_id_and_answer_before_fetch() -> None:
    a, b = new_session_id(), new_session_id()

    async def scenario(owner: SignalingClient, scientist: SignalingClient, registry: Registry) -> None:
        await owner.create(lookup_key(a), sealed(a, "offer"))
        await owner.cancel(lookup_key(a))
        await owner.cancel(lookup_key(a))  # twice is fine
        with pytest.raises(SignalingError, match="owner cancelled this session"):
            await scientist.fetch_offer(lookup_key(a))
        await owner.create(lookup_key(b), sealed(b, "offer"))
        with pytest.raises(SignalingError, match="not fetched yet"):
            await scientist.post_answer(lookup_key(b), "answer")

    run(scenario)


def test_nobody_joins_within_the_timeout() -> None:
    session_id = new_session_id()

    async def scenario(owner: SignalingClient, scientist: SignalingClient, registry: Registry) -> None:
        await owner.create(lookup_key(session_id), sealed(session_id, "offer"))
        start = time.monotonic()
        with pytest.raises(SignalingError, match=r"no scientist joined within 0\.3 s"):
            await owner.wait_answer(lookup_key(session_id), timeout=0.3)
        assert 0.25 < time.monotonic() - start < 5

    run(scenario, max_wait=0.1)


def test_server_full_and_too_many_from_one_address() -> None:
    async def scenario(owner: SignalingClient, scientist: SignalingClient, registry: Registry) -> None:
        for _ in range(2):
            await owner.create(lookup_key(new_session_id()), "offer")
        with pytest.raises(SignalingError, match="too many pending sessions from this address"):
            await owner.create(lookup_key(new_session_id()), "offer")

    run(scenario, max_per_client=2)

    async def full(owner: SignalingClient, scientist: SignalingClient, registry: Registry) -> None:
        await owner.create(lookup_key(new_session_id()), "offer")
        with pytest.raises(SignalingError, match=r"is full \(too many pending sessions in total\)") as info:
            await owner.create(lookup_key(new_session_id()), "offer")
        assert "from this address" not in str(info.value) and "run your own" in str(info.value)

    run(full, max_pending=1)


def test_unreachable_server_fails_fast_and_names_the_url() -> None:
    async def main() -> None:
        url = f"http://127.0.0.1:{free_port()}"
        async with SignalingClient(url, timeout=20) as client:
            assert await client.healthy() is False
            start = time.monotonic()
            with pytest.raises(SignalingError, match="unreachable at " + url + ".*duet-signaling") as info:
                await client.fetch_offer(lookup_key(new_session_id()))
            assert time.monotonic() - start < 5
            assert info.value.__cause__ is not None

    asyncio.run(main())


def test_bad_arguments_are_programming_errors() -> None:
    for url in ("ftp://example.org", "localhost:8765", "http://host/?x=1", "http://"):
        with pytest.raises(ValueError):
            SignalingClient(url)
    with pytest.raises(ValueError):
        SignalingClient("http://127.0.0.1:1", timeout=0)

    async def main() -> None:
        async with SignalingClient("http://127.0.0.1:9") as client:
            with pytest.raises(ValueError, match="lookup key"):
                await client.fetch_offer("../../etc/passwd")
            with pytest.raises(ValueError, match="sealed offer"):
                await client.create("ab" * 32, "")

    asyncio.run(main())


# -- misbehaving servers ---------------------------------------------------------------------------


@asynccontextmanager
async def serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """A one-handler HTTP server on a free port: its URL."""
    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def test_redirects_are_not_followed() -> None:
    async def main() -> None:
        hits: list[str] = []

        async def elsewhere(request: web.Request) -> web.Response:
            hits.append(request.path)
            return web.json_response({"offer": "stolen"})

        async with serve(elsewhere) as other:

            async def redirect(request: web.Request) -> web.Response:
                raise web.HTTPFound(other + request.path)

            async with serve(redirect) as url, SignalingClient(url) as client:
                with pytest.raises(SignalingError, match="redirect"):
                    await client.fetch_offer("ab" * 32)
                assert await client.healthy() is False
        assert hits == []

    asyncio.run(main())


def test_non_json_oversized_and_malformed_answers_are_signaling_errors() -> None:
    async def main() -> None:
        async def text(request: web.Request) -> web.Response:
            return web.Response(text="<html>hello</html>")

        async def huge(request: web.Request) -> web.Response:
            return web.Response(body=b" " * (1024 * 1024), content_type="application/json")

        async def bad_offer(request: web.Request) -> web.Response:
            return web.json_response({"offer": 5})

        async def teapot(request: web.Request) -> web.Response:
            return web.json_response({"error": "I'm a teapot", "reason": "teapot"}, status=418)

        async def boom(request: web.Request) -> web.Response:
            return web.json_response({"error": "x"}, status=500)

        cases = [(text, "not JSON"), (huge, "oversized"), (bad_offer, "malformed offer")]
        cases += [(teapot, "rejected the request \\(418: I'm a teapot\\)"), (boom, "failed \\(500\\)")]
        for handler, words in cases:
            async with serve(handler) as url, SignalingClient(url) as client:
                with pytest.raises(SignalingError, match=words):
                    await client.fetch_offer("ab" * 32)

    asyncio.run(main())


def test_a_silent_server_times_out_with_a_signaling_error() -> None:
    async def main() -> None:
        connected = asyncio.Event()
        writers: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            connected.set()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with SignalingClient(f"http://127.0.0.1:{port}", timeout=0.3) as client:
                with pytest.raises(SignalingError, match=r"did not answer within 0\.3 s"):
                    await client.fetch_offer("ab" * 32)
                assert connected.is_set()
                assert await client.healthy() is False
        finally:
            for writer in writers:
                writer.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
