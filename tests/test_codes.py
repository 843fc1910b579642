"""Session IDs, the lookup and sealing keys, and sealed tokens."""

from __future__ import annotations

import base64
import math
import re

import pytest

from duet.errors import SignalingError
from duet.signaling import codes
from duet.signaling.codes import (
    ALPHABET,
    lookup_key,
    new_session_id,
    normalize_session_id,
    seal,
    sealing_key,
    unseal,
)

ID_RE = re.compile(r"duet-[23456789abcdefghjkmnpqrstuvwxyz]{4}(-[23456789abcdefghjkmnpqrstuvwxyz]{4}){6}")


def _symbols(session_id: str) -> str:
    return session_id.removeprefix("duet-").replace("-", "")


def test_alphabet_has_no_lookalikes_and_ids_carry_128_bits() -> None:
    assert len(set(ALPHABET)) == len(ALPHABET) == 31
    assert not set("0o1li") & set(ALPHABET)
    assert ALPHABET == ALPHABET.lower()
    data_symbols = len(_symbols(new_session_id())) - 2
    assert data_symbols * math.log2(len(ALPHABET)) >= 128


def test_new_ids_have_the_documented_format_and_differ() -> None:
    ids = {new_session_id() for _ in range(500)}
    assert len(ids) == 500
    for session_id in ids:
        assert ID_RE.fullmatch(session_id), session_id
        assert normalize_session_id(session_id) == session_id
    # every symbol shows up in random data positions (a crude check that the draw covers the alphabet)
    assert set("".join(_symbols(s)[:26] for s in ids)) == set(ALPHABET)


def test_normalize_accepts_case_whitespace_dashes_and_no_prefix() -> None:
    session_id = new_session_id()
    bare = _symbols(session_id)
    variants = [
        f"  {session_id}\n",
        session_id.upper(),
        "duet" + bare,
        bare,
        bare.upper(),
        "-".join(bare),
        "duet--" + session_id[5:].replace("-", "--") + "-",
        " ".join([bare[:10], bare[10:20], bare[20:]]),
    ]
    for variant in variants:
        assert normalize_session_id(variant) == session_id, variant


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "malformed"),
        ("duet-", "malformed"),
        ("duet-abcd", "malformed"),
        ("hello world", "malformed"),
    ],
)
def test_normalize_rejects_wrong_lengths(text: str, words: str) -> None:
    with pytest.raises(SignalingError, match=words) as info:
        normalize_session_id(text)
    assert "duet-xxxx-xxxx" in str(info.value)  # says what an ID looks like


def test_normalize_rejects_lookalike_characters_without_echoing_the_id() -> None:
    session_id = new_session_id()
    bad = session_id[:-1] + "0"
    with pytest.raises(SignalingError, match="malformed.*'0'.*never use") as info:
        normalize_session_id(bad)
    assert _symbols(session_id)[:-1] not in str(info.value)  # the secret is never echoed


def test_normalize_rejects_non_strings() -> None:
    with pytest.raises(SignalingError, match="string"):
        normalize_session_id(12345)  # type: ignore[arg-type]


def test_checksum_catches_every_single_symbol_typo() -> None:
    session_id = new_session_id()
    bare = _symbols(session_id)
    for position in range(len(bare)):
        for symbol in ALPHABET:
            if symbol == bare[position]:
                continue
            typo = bare[:position] + symbol + bare[position + 1 :]
            with pytest.raises(SignalingError, match="mistyped"):
                normalize_session_id(typo)


def test_checksum_catches_every_swap_of_two_symbols() -> None:
    for _ in range(20):
        bare = _symbols(new_session_id())
        for i in range(len(bare)):
            for j in range(i + 1, len(bare)):
                if bare[i] == bare[j]:
                    continue
                swapped = list(bare)
                swapped[i], swapped[j] = swapped[j], swapped[i]
                with pytest.raises(SignalingError, match="mistyped"):
                    normalize_session_id("".join(swapped))


def test_checksum_catches_two_typos_even_when_they_cancel_in_one_sum() -> None:
    bare = _symbols(new_session_id())
    values = [ALPHABET.index(c) for c in bare]
    for i in range(len(bare)):
        for j in range(i + 1, len(bare)):
            # shift i by 1 and j by the amount that keeps the position-weighted sum unchanged
            shift_j = (-(i + 1) * pow(j + 1, -1, 31)) % 31
            typo = list(values)
            typo[i] = (typo[i] + 1) % 31
            typo[j] = (typo[j] + shift_j) % 31
            with pytest.raises(SignalingError, match="mistyped"):
                normalize_session_id("".join(ALPHABET[v] for v in typo))


def test_lookup_and_sealing_keys_are_deterministic_distinct_and_hide_the_id() -> None:
    session_id = new_session_id()
    other = new_session_id()
    key = lookup_key(session_id)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert key == lookup_key(session_id.upper()) == lookup_key(_symbols(session_id))
    assert key != lookup_key(other)
    box_key = sealing_key(session_id)
    assert isinstance(box_key, bytes) and len(box_key) == 32
    assert box_key == sealing_key(session_id) != sealing_key(other)
    assert box_key.hex() != key  # different domain separation
    assert _symbols(session_id) not in key


def test_keys_refuse_a_mistyped_id() -> None:
    bare = _symbols(new_session_id())
    typo = bare[:5] + ALPHABET[(ALPHABET.index(bare[5]) + 1) % 31] + bare[6:]
    with pytest.raises(SignalingError, match="mistyped"):
        lookup_key(typo)
    with pytest.raises(SignalingError, match="mistyped"):
        sealing_key(typo)


def test_seal_unseal_round_trip_with_url_safe_token() -> None:
    key = sealing_key(new_session_id())
    payload = {"sdp": "v=0\r\na=fingerprint:sha-256 AB:CD\r\n", "type": "offer", "n": [1, 2.5, None, True]}
    token = seal(key, "offer", payload)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert "fingerprint" not in token
    assert unseal(key, "offer", token) == payload
    assert seal(key, "offer", payload) != token  # fresh nonce every time


def test_unseal_rejects_a_tampered_token() -> None:
    key = sealing_key(new_session_id())
    token = seal(key, "answer", {"sdp": "x" * 100})
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for index in (0, 30, len(raw) - 1):  # nonce, ciphertext, tag/end
        tampered = bytearray(raw)
        tampered[index] ^= 0x01
        text = base64.urlsafe_b64encode(bytes(tampered)).decode().rstrip("=")
        with pytest.raises(SignalingError, match="could not be opened"):
            unseal(key, "answer", text)


def test_unseal_rejects_wrong_key_and_wrong_role() -> None:
    key = sealing_key(new_session_id())
    token = seal(key, "offer", {"sdp": "x"})
    with pytest.raises(SignalingError, match="could not be opened"):
        unseal(sealing_key(new_session_id()), "offer", token)
    with pytest.raises(SignalingError, match="not an answer"):
        unseal(key, "answer", token)


@pytest.mark.parametrize(
    "token",
    ["", "not base64!", "a", "abc+/def", "A" * 10, "x" * (codes.MAX_TOKEN_CHARS + 1), 42, None],
)
def test_unseal_rejects_garbage(token: object) -> None:
    key = sealing_key(new_session_id())
    with pytest.raises(SignalingError):
        unseal(key, "offer", token)  # type: ignore[arg-type]


def test_unseal_rejects_a_sealed_non_object_or_foreign_format() -> None:
    import json

    import nacl.secret

    key = sealing_key(new_session_id())
    box = nacl.secret.SecretBox(key)

    def raw_token(obj: object) -> str:
        return base64.urlsafe_b64encode(box.encrypt(json.dumps(obj).encode())).decode().rstrip("=")

    with pytest.raises(SignalingError, match="does not contain an object"):
        unseal(key, "offer", raw_token({"v": 1, "role": "offer", "payload": [1, 2]}))
    with pytest.raises(SignalingError, match="unknown format"):
        unseal(key, "offer", raw_token(["offer"]))
    with pytest.raises(SignalingError, match="unknown format"):
        unseal(key, "offer", raw_token({"v": 2, "role": "offer", "payload": {}}))
    not_json = base64.urlsafe_b64encode(box.encrypt(b"\xff\xfe{")).decode().rstrip("=")
    with pytest.raises(SignalingError, match="JSON"):
        unseal(key, "offer", not_json)


def test_seal_refuses_programming_errors_and_oversized_payloads() -> None:
    key = sealing_key(new_session_id())
    with pytest.raises(ValueError, match="role"):
        seal(key, "hello", {})
    with pytest.raises(ValueError, match="32 bytes"):
        seal(b"short", "offer", {})
    with pytest.raises(TypeError):
        seal(key, "offer", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(SignalingError, match="too large"):
        seal(key, "offer", {"sdp": "x" * codes.MAX_TOKEN_CHARS})
