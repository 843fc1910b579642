"""Session IDs and what is derived from them: lookup key, sealing key, sealed tokens. Pure, no I/O.

A session ID reads ``duet-`` followed by seven groups of four symbols::

    duet-7xkq-m2fd-9rta-hh4c-u5pw-e8gn-3bzk
         <------ 26 data symbols ------->^^ 2 check symbols

The 31 symbols are the lowercase letters and digits minus the lookalikes ``0 o 1 l i``. Only 31 such
characters exist, so the ID is written in base 31: 26 random symbols carry 26 * log2(31) = 128.8 bits from
:mod:`secrets`, and because 31 is prime the two check symbols make an exact code: every single-symbol typo,
every swap of two symbols and every pair of typos is detected before anything is sent.

From the canonical ID two keys are derived with BLAKE2b under distinct personalisations:

* :func:`lookup_key`: 64 hex characters, the only thing the signaling server ever sees;
* :func:`sealing_key`: a 32-byte PyNaCl ``SecretBox`` key; :func:`seal` / :func:`unseal` use it to wrap the
  SDP offer and answer so the server can neither read nor alter them. The role (``offer``/``answer``) is
  sealed inside, so one cannot be replayed as the other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from typing import Any

import nacl.exceptions
import nacl.secret

from ..errors import SignalingError

__all__ = [
    "ALPHABET",
    "PREFIX",
    "ROLES",
    "MAX_TOKEN_CHARS",
    "new_session_id",
    "normalize_session_id",
    "lookup_key",
    "sealing_key",
    "seal",
    "unseal",
]

ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
PREFIX = "duet-"
ROLES = ("offer", "answer")
MAX_TOKEN_CHARS = 16 * 1024
"""Longest sealed token the server accepts (an SDP with a few dozen ICE candidates fits easily)."""

_BASE = len(ALPHABET)  # 31, a prime: the check below is exact
_DATA = 26
_CHECK = 2
_LENGTH = _DATA + _CHECK
_GROUP = 4
_VALUE = {c: v for v, c in enumerate(ALPHABET)}
_EXAMPLE = PREFIX + "-".join(["xxxx"] * (_LENGTH // _GROUP))
_LOOKUP_PERSON = b"duet.lookup.v1"
_SEAL_PERSON = b"duet.seal.v1"
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")
_SEAL_VERSION = 1


def _syndrome(values: list[int]) -> tuple[int, int]:
    """The two weighted sums (weights k and k**2 for position k = 1..n) modulo 31; (0, 0) for a valid ID."""
    s1 = sum(k * v for k, v in enumerate(values, 1)) % _BASE
    s2 = sum(k * k * v for k, v in enumerate(values, 1)) % _BASE
    return s1, s2


def _check_values(data: list[int]) -> list[int]:
    """Solve for the two check values x, y at positions 27, 28 so that the syndrome is (0, 0)."""
    s1, s2 = _syndrome(data)
    a, b = _DATA + 1, _DATA + 2
    # a*x + b*y = -s1 and a²*x + b²*y = -s2 (mod 31); Cramer's rule, det = a*b*(b - a) != 0
    det_inv = pow(a * b * (b - a), -1, _BASE)
    x = ((-s1) * b * b - (-s2) * b) * det_inv % _BASE
    y = (a * (-s2) - a * a * (-s1)) * det_inv % _BASE
    return [x, y]


def _format(symbols: str) -> str:
    return PREFIX + "-".join(symbols[i : i + _GROUP] for i in range(0, len(symbols), _GROUP))


def new_session_id() -> str:
    """A fresh random session ID (128.8 bits of entropy plus two check symbols)."""
    data = [secrets.randbelow(_BASE) for _ in range(_DATA)]
    return _format("".join(ALPHABET[v] for v in data + _check_values(data)))


def normalize_session_id(text: str) -> str:
    """The canonical form of a session ID as pasted or typed; :class:`SignalingError` if it is not one.

    Whitespace, case and dashes do not matter, and the ``duet-`` prefix may be left out. The ID itself
    never appears in the error message (it is a secret).
    """
    if not isinstance(text, str):
        raise SignalingError(f"a session ID is a string like {_EXAMPLE}, not {type(text).__name__}")
    symbols = "".join(text.split()).lower().replace("-", "")
    if len(symbols) == _LENGTH + len(PREFIX) - 1 and symbols.startswith(PREFIX[:-1]):
        symbols = symbols[len(PREFIX) - 1 :]
    if len(symbols) != _LENGTH:
        raise SignalingError(
            f"malformed session ID: expected {_LENGTH} symbols after '{PREFIX}', got {len(symbols)}; "
            f"a session ID looks like {_EXAMPLE}: check it was copied whole"
        )
    bad = sorted({c for c in symbols if c not in _VALUE})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise SignalingError(
            f"malformed session ID: it contains {shown}, which session IDs never use "
            f"(they have no 0, o, 1, l or i); a session ID looks like {_EXAMPLE}"
        )
    if _syndrome([_VALUE[c] for c in symbols]) != (0, 0):
        raise SignalingError(
            "mistyped session ID: its check symbols do not match, so at least one symbol is wrong; "
            f"copy it again exactly as the owner shared it (it looks like {_EXAMPLE})"
        )
    return _format(symbols)


def _derive(session_id: str, person: bytes) -> bytes:
    canonical = normalize_session_id(session_id)
    return hashlib.blake2b(canonical.encode("ascii"), digest_size=32, person=person).digest()


def lookup_key(session_id: str) -> str:
    """What the server sees instead of the session ID: 64 hex characters."""
    return _derive(session_id, _LOOKUP_PERSON).hex()


def sealing_key(session_id: str) -> bytes:
    """The 32-byte SecretBox key that seals the offer and the answer."""
    return _derive(session_id, _SEAL_PERSON)


def _box(key: bytes) -> nacl.secret.SecretBox:
    if not isinstance(key, bytes) or len(key) != nacl.secret.SecretBox.KEY_SIZE:
        raise ValueError(f"a sealing key is {nacl.secret.SecretBox.KEY_SIZE} bytes")
    return nacl.secret.SecretBox(key)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")


def seal(key: bytes, role: str, payload: dict[str, Any]) -> str:
    """Encrypt and authenticate ``payload`` (a JSON-able dict) for ``role``; url-safe base64 text."""
    _check_role(role)
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, not {type(payload).__name__}")
    plain = json.dumps({"v": _SEAL_VERSION, "role": role, "payload": payload}, separators=(",", ":"))
    token = base64.urlsafe_b64encode(_box(key).encrypt(plain.encode("utf-8"))).decode("ascii").rstrip("=")
    if len(token) > MAX_TOKEN_CHARS:
        raise SignalingError(f"the {role} is too large to relay ({len(token)} > {MAX_TOKEN_CHARS} chars)")
    return token


def unseal(key: bytes, role: str, token: str) -> dict[str, Any]:
    """The payload sealed by :func:`seal` for ``role``; :class:`SignalingError` on anything else."""
    _check_role(role)
    box = _box(key)
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS or not _TOKEN_RE.fullmatch(token):
        raise SignalingError(f"the sealed {role} is not a token (url-safe base64 text)")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SignalingError(f"the sealed {role} is not valid base64") from exc
    try:
        plain = box.decrypt(raw)
    except (nacl.exceptions.CryptoError, ValueError) as exc:
        raise SignalingError(
            f"the sealed {role} could not be opened: it was altered on the way or sealed for another session"
        ) from exc
    try:
        message = json.loads(plain.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SignalingError(f"the sealed {role} does not contain JSON") from exc
    if not isinstance(message, dict) or message.get("v") != _SEAL_VERSION:
        raise SignalingError(f"the sealed {role} has an unknown format (a different duet version?)")
    if message.get("role") != role:
        raise SignalingError(f"the sealed token is not an {role}: it was sealed as {message.get('role')!r}")
    payload = message.get("payload")
    if not isinstance(payload, dict):
        raise SignalingError(f"the sealed {role} does not contain an object")
    return payload
