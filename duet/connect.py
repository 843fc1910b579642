"""Meeting the peer: sealed, signed SDP through the signaling server, then an open aiortc data channel."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidStateError

from . import ice
from .errors import ConnectionError, ProtocolError, SignalingError
from .identity import Identity, fingerprint, verify
from .signaling import codes
from .signaling.client import SignalingClient

__all__ = ["PeerInfo", "Pending", "ice_configuration", "offer", "await_answer", "answer"]

LABEL = "duet"
_DATA_SECTION = re.compile(r"^m=application ", re.MULTILINE)
IceServers = Sequence[str | dict[str, Any]] | None


@dataclass(frozen=True)
class PeerInfo:
    """Who is on the other side, as their sealed and signed SDP says."""

    name: str
    fingerprint: str
    max_message: int


def ice_configuration(ice_servers: IceServers) -> RTCConfiguration:
    """STUN/TURN servers as aiortc wants them. None means none at all (aiortc's default is a public STUN)."""
    servers: list[RTCIceServer] = []
    for item in ice_servers or ():
        if isinstance(item, str):
            servers.append(RTCIceServer(urls=item))
        elif isinstance(item, dict) and "urls" in item:
            servers.append(
                RTCIceServer(
                    urls=item["urls"], username=item.get("username"), credential=item.get("credential")
                )
            )
        else:
            raise ValueError(
                f"an ICE server is a URL or a dict with 'urls' (and username/credential): {item!r}"
            )
    return RTCConfiguration(iceServers=servers)


def _signed(identity: Identity, role: str, key: str, sdp: str, name: str) -> dict[str, Any]:
    message = f"duet/{role}\n{key}\n{sdp}".encode()
    return {
        "sdp": sdp,
        "name": name[:100],
        "vk": base64.b64encode(identity.verify_key).decode(),
        "sig": base64.b64encode(identity.sign(message)).decode(),
    }


def _checked(payload: dict[str, Any], role: str, key: str) -> tuple[str, PeerInfo]:
    """The peer's SDP and who signed it; SignalingError unless it is complete and signed for this session."""
    if not isinstance(payload, dict):
        raise SignalingError(f"the peer's {role} is not an object")
    try:
        sdp, name = str(payload["sdp"]), str(payload.get("name", ""))[:100]
        vk = base64.b64decode(payload["vk"], validate=True)
        sig = base64.b64decode(payload["sig"], validate=True)
    except (KeyError, ValueError, TypeError) as exc:
        raise SignalingError(f"the peer's {role} is incomplete") from exc
    verify(vk, f"duet/{role}\n{key}\n{sdp}".encode(), sig)
    found = re.search(r"^a=max-message-size:(\d+)", sdp, re.MULTILINE)
    max_message = int(found.group(1)) if found else 65536
    if max_message == 0:
        max_message = 1 << 18  # "any size": keep parts modest so the lanes interleave
    return sdp, PeerInfo(name=name or "anonymous", fingerprint=fingerprint(vk), max_message=max_message)


@dataclass
class Pending:
    """The owner's side between posting its offer and the scientist's answer."""

    pc: RTCPeerConnection
    dc: Any
    key: str
    seal_key: bytes


async def offer(
    client: SignalingClient, session_id: str, identity: Identity, name: str, ice_servers: IceServers
) -> Pending:
    """Owner: create the connection and its data channel, post the sealed, signed offer."""
    ice.install()
    key, seal_key = codes.lookup_key(session_id), codes.sealing_key(session_id)
    pc = RTCPeerConnection(ice_configuration(ice_servers))
    try:
        dc = pc.createDataChannel(LABEL, ordered=True)
        payload = _signed(identity, "offer", key, await _describe_local(pc, "offer"), name)
        await client.create(key, codes.seal(seal_key, "offer", payload))
    except BaseException:
        await pc.close()
        raise
    return Pending(pc, dc, key, seal_key)


async def await_answer(client: SignalingClient, pending: Pending, timeout: float | None) -> PeerInfo:
    """Owner: wait for the scientist's answer, check it, and wait for the channel to open."""
    token = await client.wait_answer(
        pending.key, timeout=timeout if timeout is not None else 10 * 365 * 86400
    )
    sdp, peer = _checked(codes.unseal(pending.seal_key, "answer", token), "answer", pending.key)
    opened = asyncio.get_running_loop().create_future()
    if pending.dc.readyState == "open":
        opened.set_result(None)
    else:
        pending.dc.once("open", lambda: _settle(opened, None))
    await _apply(pending.pc, sdp, "answer")
    await _wait_open(pending.pc, opened, timeout=30.0)
    return peer


async def answer(
    client: SignalingClient,
    session_id: str,
    identity: Identity,
    name: str,
    ice_servers: IceServers,
    timeout: float,
) -> tuple[RTCPeerConnection, Any, PeerInfo]:
    """Scientist: fetch and check the owner's offer, post the sealed, signed answer, wait for the channel."""
    ice.install()
    key, seal_key = codes.lookup_key(session_id), codes.sealing_key(session_id)
    token = await client.fetch_offer(key)
    sdp, peer = _checked(codes.unseal(seal_key, "offer", token), "offer", key)
    pc = RTCPeerConnection(ice_configuration(ice_servers))
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[Any] = loop.create_future()

    @pc.on("datachannel")
    def on_datachannel(channel: Any) -> None:
        if channel.label != LABEL or opened.done():
            return
        if channel.readyState == "open":
            opened.set_result(channel)
        else:
            channel.once("open", lambda: _settle(opened, channel))

    try:
        await _apply(pc, sdp, "offer")
        payload = _signed(identity, "answer", key, await _describe_local(pc, "answer"), name)
        await client.post_answer(key, codes.seal(seal_key, "answer", payload))
        dc = await _wait_open(pc, opened, timeout)
    except BaseException:
        await pc.close()
        raise
    return pc, dc, peer


def _why(exc: BaseException) -> str:
    """An aiortc error as text: its type, and its message when it has one (a bare assert has none)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _describe_local(pc: RTCPeerConnection, kind: str) -> str:
    """Create and set this side's offer or answer; its SDP. aiortc's errors become ConnectionError."""
    try:
        make = pc.createOffer if kind == "offer" else pc.createAnswer
        await pc.setLocalDescription(await make())
        return str(pc.localDescription.sdp)
    except Exception as exc:  # noqa: BLE001 - aiortc raises ValueError, AssertionError, InvalidStateError …
        raise ConnectionError(f"could not create this side's connection {kind}: {_why(exc)}") from exc


async def _apply(pc: RTCPeerConnection, sdp: str, kind: str) -> None:
    """Set the peer's description, translating aiortc's errors at the boundary.

    An SDP without a data channel section, or one aiortc cannot parse or apply, is the peer's malformed
    input: ProtocolError. (aiortc's parser raises AssertionError, AttributeError, KeyError, ValueError …
    on malformed lines, and accepts an offer with no media at all.) A connection closed meanwhile, or in
    the wrong state for it, is ConnectionError.
    """
    if not isinstance(sdp, str) or not sdp.startswith("v=0") or not _DATA_SECTION.search(sdp):
        raise ProtocolError(
            f"the peer's connection {kind} is not usable: it is not an SDP with a data channel section"
        )
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
    except InvalidStateError as exc:
        raise ConnectionError(f"could not apply the peer's connection {kind}: {_why(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - translated at the boundary, whatever aiortc's parser raised
        raise ProtocolError(f"the peer's connection {kind} is not usable: {_why(exc)}") from exc


def _settle(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


async def _wait_open(pc: RTCPeerConnection, opened: asyncio.Future[Any], timeout: float) -> Any:
    failed = asyncio.get_running_loop().create_future()

    def on_state() -> None:
        if pc.connectionState in ("failed", "closed") and not failed.done():
            failed.set_result(pc.connectionState)

    pc.on("connectionstatechange", on_state)
    try:
        done, _ = await asyncio.wait({opened, failed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        pc.remove_listener("connectionstatechange", on_state)
        if not failed.done():
            failed.cancel()
    if opened in done:
        ice.widen_buffers(pc)  # bulk transfers must not overflow aioice's 256 KB (see duet.ice)
        return opened.result()
    if failed in done:
        raise ConnectionError(
            f"the peer connection {failed.result()}: no network path between the two machines "
            "(behind different NATs? pass ice_servers=[a STUN/TURN server])"
        )
    raise ConnectionError(
        f"the data channel did not open within {timeout:.0f} s: no network path between the two machines "
        "(behind different NATs or a firewall? pass ice_servers=[a STUN/TURN server])"
    )
