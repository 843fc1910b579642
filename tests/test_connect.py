"""Pairing's boundary with aiortc and PyNaCl: a peer's unusable SDP, forged signature or missing key raises a
duet error (ProtocolError, ConnectionError, SignalingError), never aiortc's or nacl's own exception."""

from __future__ import annotations

import base64
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiortc import RTCPeerConnection

import duet
from duet import connect, loop
from duet.errors import ConnectionError, DuetError, ProtocolError, SignalingError
from duet.identity import Identity
from duet.signaling import codes
from duet.signaling.client import SignalingClient

KEY = "ab" * 32
HOSTILE_SDP = "v=0\r\nm=audio x\r\n"  # aiortc's parser asserts on it (and it has no data channel section)
DATA = "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
ASSERTING = f"v=0\r\nm=audio x\r\n{DATA}"  # has one, and aiortc's parser still asserts
UNUSABLE = {
    "aiortc-asserts": HOSTILE_SDP,
    "asserts-with-data-section": ASSERTING,
    "garbage": "garbage",
    "empty": "",
    "no-media": "v=0\r\n",
    "no-ice": f"v=0\r\n{DATA}",
    "bad-sctp-port": f"v=0\r\n{DATA}a=sctp-port\r\n",
}


def run(make: Callable[[], Awaitable[Any]]) -> Any:
    return loop.run(make(), timeout=30)


async def _fresh(with_offer: bool) -> RTCPeerConnection:
    pc = RTCPeerConnection(connect.ice_configuration(None))
    if with_offer:  # the owner's side, which applies an answer
        pc.createDataChannel(connect.LABEL)
        await connect._describe_local(pc, "offer")
    return pc


async def _apply_to_fresh(sdp: Any, kind: str) -> None:
    pc = await _fresh(with_offer=kind == "answer")
    try:
        await connect._apply(pc, sdp, kind)
    finally:
        await pc.close()


async def _real_offer() -> str:
    pc = await _fresh(with_offer=True)
    sdp = pc.localDescription.sdp
    await pc.close()
    return str(sdp)


# ---- _apply: the peer's SDP --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["offer", "answer"])
@pytest.mark.parametrize("sdp", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_an_unusable_sdp_is_a_protocol_error(sdp: str, kind: str) -> None:
    with pytest.raises(ProtocolError, match=f"the peer's connection {kind} is not usable") as info:
        run(lambda: _apply_to_fresh(sdp, kind))
    assert not isinstance(info.value.__cause__, DuetError)


def test_the_assertion_aiortc_raises_is_translated_with_its_cause() -> None:
    with pytest.raises(ProtocolError, match="not usable: AssertionError") as info:
        run(lambda: _apply_to_fresh(ASSERTING, "answer"))
    assert isinstance(info.value.__cause__, AssertionError)


@pytest.mark.parametrize("sdp", [None, 42, b"v=0\r\nm=application 9 x\r\n"])
def test_an_sdp_that_is_not_text_is_a_protocol_error(sdp: Any) -> None:
    with pytest.raises(ProtocolError, match="not an SDP"):
        run(lambda: _apply_to_fresh(sdp, "offer"))


def test_mutated_offers_raise_only_duet_errors() -> None:
    """Lines of a real offer cut, dropped, doubled: applying it and answering give a duet error or work."""

    async def go() -> dict[str, int]:
        lines = (await _real_offer()).split("\r\n")
        rnd, seen = random.Random(7), {"ok": 0, "ProtocolError": 0, "ConnectionError": 0}
        for _ in range(60):
            mutated = list(lines)
            for _ in range(rnd.randint(1, 3)):
                j = rnd.randrange(len(mutated))
                op = rnd.randrange(3)
                if op == 0:
                    del mutated[j]
                elif op == 1:
                    mutated[j] = mutated[j][: rnd.randrange(len(mutated[j]) + 1)]
                else:
                    mutated.insert(j, mutated[rnd.randrange(len(mutated))] + "x")
            pc = await _fresh(with_offer=False)
            try:
                await connect._apply(pc, "\r\n".join(mutated), "offer")
                await connect._describe_local(pc, "answer")
                seen["ok"] += 1
            except (ProtocolError, ConnectionError) as exc:
                seen[type(exc).__name__] += 1
            finally:
                await pc.close()
        return seen

    seen = run(go)
    assert seen["ProtocolError"] > 0 and seen["ok"] > 0  # both kinds happened: the mutations did something


def test_applying_to_a_closed_connection_is_a_connection_error() -> None:
    async def go() -> None:
        sdp = await _real_offer()
        pc = await _fresh(with_offer=False)
        await pc.close()
        await connect._apply(pc, sdp, "offer")

    with pytest.raises(ConnectionError, match="could not apply the peer's connection offer") as info:
        run(go)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("kind", ["offer", "answer"])
def test_describing_a_closed_connection_is_a_connection_error(kind: str) -> None:
    async def go() -> None:
        pc = await _fresh(with_offer=False)
        await pc.close()
        await connect._describe_local(pc, kind)

    with pytest.raises(
        ConnectionError, match=f"could not create this side's connection {kind}: InvalidState"
    ):
        run(go)


def test_an_answer_before_any_remote_offer_is_a_connection_error() -> None:
    async def go() -> None:
        pc = await _fresh(with_offer=False)
        try:
            await connect._describe_local(pc, "answer")
        finally:
            await pc.close()

    with pytest.raises(ConnectionError, match="could not create this side's connection answer"):
        run(go)


# ---- _checked: the signed, sealed payload --------------------------------------------------------------------


SDP = "v=0\r\na=max-message-size:1000\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"


def _payload(signer: Identity, role: str = "answer", key: str = KEY, sdp: str = SDP) -> dict[str, Any]:
    return connect._signed(signer, role, key, sdp, "bob")


def test_a_well_signed_payload_is_accepted() -> None:
    alice = Identity.generate()
    sdp, peer = connect._checked(_payload(alice), "answer", KEY)
    assert sdp == SDP and peer.name == "bob" and peer.max_message == 1000
    assert peer.fingerprint == alice.fingerprint


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _forged_signature(p: dict[str, Any]) -> None:
    sig = bytearray(base64.b64decode(p["sig"]))
    sig[0] ^= 1
    p["sig"] = _b64(bytes(sig))


def _wrong_identity(p: dict[str, Any]) -> None:
    p["vk"] = _b64(Identity.generate().verify_key)  # signed by one key, claims another


def _swapped_sdp(p: dict[str, Any]) -> None:
    p["sdp"] = SDP.replace("1000", "2000")  # the signature covers the SDP: a server cannot swap it


TAMPERINGS: dict[str, Callable[[dict[str, Any]], None]] = {
    "forged signature": _forged_signature,
    "wrong identity": _wrong_identity,
    "swapped sdp": _swapped_sdp,
    "missing verify key": lambda p: p.pop("vk"),
    "missing signature": lambda p: p.pop("sig"),
    "missing sdp": lambda p: p.pop("sdp"),
    "short verify key": lambda p: p.update(vk=_b64(b"\x01" * 31)),
    "empty verify key": lambda p: p.update(vk=""),
    "short signature": lambda p: p.update(sig=_b64(b"\x00" * 10)),
    "verify key not base64": lambda p: p.update(vk="not base64!"),
    "verify key not text": lambda p: p.update(vk=12345),
    "signature a list": lambda p: p.update(sig=[1, 2]),
}


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_a_tampered_payload_is_a_signaling_error(tamper: Callable[[dict[str, Any]], None]) -> None:
    payload = _payload(Identity.generate())
    tamper(payload)
    with pytest.raises(SignalingError, match="the peer's"):
        connect._checked(payload, "answer", KEY)


@pytest.mark.parametrize(
    ("role", "key", "checked_as"),
    [("offer", KEY, "answer"), ("answer", "cd" * 32, "answer")],
    ids=["signed as the other role", "signed for another session"],
)
def test_a_signature_for_another_role_or_session_is_a_signaling_error(
    role: str, key: str, checked_as: str
) -> None:
    with pytest.raises(SignalingError, match="does not verify"):
        connect._checked(_payload(Identity.generate(), role=role, key=key), checked_as, KEY)


def test_a_payload_that_is_not_an_object_is_a_signaling_error() -> None:
    with pytest.raises(SignalingError, match="not an object"):
        connect._checked(["sdp"], "answer", KEY)  # type: ignore[arg-type]


# ---- the owner, paired with a hostile scientist --------------------------------------------------------------


def test_a_hostile_answer_makes_wait_for_peer_raise_a_protocol_error(signaling_url: str) -> None:
    """A scientist that holds the session ID signs and seals an answer aiortc's parser asserts on: before,
    the owner's wait_for_peer() raised that bare AssertionError."""
    owner = duet.launch_duet(signaling_url=signaling_url, quiet=True)
    try:
        key, seal_key = codes.lookup_key(owner.session_id), codes.sealing_key(owner.session_id)

        async def answer_badly() -> None:
            async with SignalingClient(signaling_url, timeout=10) as client:
                codes.unseal(seal_key, "offer", await client.fetch_offer(key))
                payload = connect._signed(Identity.generate(), "answer", key, ASSERTING, "mallory")
                await client.post_answer(key, codes.seal(seal_key, "answer", payload))

        run(answer_badly)
        with pytest.raises(ProtocolError, match="the peer's connection answer is not usable") as info:
            owner.wait_for_peer(timeout=20)
        assert isinstance(info.value.__cause__, AssertionError)
        assert owner.status == "closed"
    finally:
        owner.close()
