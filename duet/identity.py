"""Each party's Ed25519 identity: kept under the user's config directory (mode 0600), shown as a fingerprint."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing

from .errors import SignalingError

__all__ = ["Identity", "config_dir", "fingerprint", "verify"]


def config_dir() -> Path:
    """``$DUET_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/duet``, else ``~/.config/duet``."""
    if env := os.environ.get("DUET_CONFIG_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "duet"


def fingerprint(verify_key: bytes) -> str:
    """A short, readable fingerprint of a public key, e.g. ``3f9a-12bc-77d0-e1a4``."""
    digest = hashlib.blake2b(verify_key, digest_size=8, person=b"duet-fprint").hexdigest()
    return "-".join(digest[i : i + 4] for i in range(0, 16, 4))


def verify(verify_key: bytes, message: bytes, signature: bytes) -> None:
    """Check a signature; raises SignalingError if it does not verify."""
    try:
        nacl.signing.VerifyKey(verify_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError) as exc:
        raise SignalingError("the peer's signature on its connection offer does not verify") from exc


@dataclass(frozen=True)
class Identity:
    signing_key: nacl.signing.SigningKey

    @property
    def verify_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.verify_key)

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def load_or_create(cls, directory: Path | None = None) -> Identity:
        """Load the key from ``identity.key`` in the config directory, creating it (mode 0600) if absent."""
        directory = directory or config_dir()
        path = directory / "identity.key"
        try:
            seed = path.read_bytes()
            if len(seed) == 32:
                if stat.S_IMODE(path.stat().st_mode) & 0o077:
                    os.chmod(path, 0o600)
                return cls(nacl.signing.SigningKey(seed))
        except FileNotFoundError:
            pass
        except OSError:
            return cls.generate()  # unreadable config dir: a fresh key for this process only
        key = nacl.signing.SigningKey.generate()
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(bytes(key))
        except OSError:
            pass  # read-only home: the identity lives for this process only
        return cls(key)
