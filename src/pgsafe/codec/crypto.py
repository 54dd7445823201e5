"""Encryption for repositories: AES-256-GCM over chunks, with a key hierarchy.

A random 256-bit data key encrypts everything; it is stored only wrapped (AES-GCM)
by a key derived from the passphrase with scrypt, so changing the passphrase
rewraps 32 bytes and rewrites no data. Each envelope derives its own key from the
data key and a random 32-byte salt (HKDF-SHA256), so nonces are simple counters and
never repeat under one key. Each 1 MiB chunk is sealed separately, the last one
flagged in its nonce, so truncation, reordering and any flipped bit are detected
before a byte of plaintext is used.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pgsafe import cache

SALT_SIZE = 32
TAG_SIZE = 16
CHUNK = 1024 * 1024
SCRYPT = {"n": 2**15, "r": 8, "p": 1}
WRAP_AAD = b"pgsafe data key v1"


class CryptoError(Exception):
    """Authentication failed: wrong key, or tampered or damaged ciphertext."""


class ObjectCipher:
    """Seals or opens the chunks of one envelope."""

    def __init__(self, data_key: bytes, salt: bytes, aad: bytes) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"pgsafe object v1").derive(data_key)
        self.aead = AESGCM(key)
        self.aad = aad
        self.counter = 0

    def _nonce(self, last: bool) -> bytes:
        nonce = struct.pack(">QBxxx", self.counter, 1 if last else 0)
        self.counter += 1
        return nonce

    def seal(self, chunk: bytes, last: bool) -> bytes:
        return self.aead.encrypt(self._nonce(last), chunk, self.aad)

    def open(self, sealed: bytes, last: bool) -> bytes:
        try:
            return self.aead.decrypt(self._nonce(last), sealed, self.aad)
        except InvalidTag:
            raise CryptoError("authentication failed: wrong key, or the object was tampered with or damaged") from None


@dataclass(frozen=True)
class KeyFile:
    """The wrapped data key, as stored in the repository (plain JSON)."""

    salt: bytes
    nonce: bytes
    wrapped: bytes
    kdf: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1, "cipher": "aes-256-gcm", "kdf": "scrypt", **self.kdf,
            "salt": _b64(self.salt), "nonce": _b64(self.nonce), "wrapped_key": _b64(self.wrapped),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "KeyFile":
        return cls(_unb64(doc["salt"]), _unb64(doc["nonce"]), _unb64(doc["wrapped_key"]),
                   {"n": int(doc["n"]), "r": int(doc["r"]), "p": int(doc["p"])})


def new_key_file(passphrase: bytes, data_key: bytes | None = None) -> tuple[KeyFile, bytes]:
    data_key = data_key or os.urandom(32)
    salt, nonce = os.urandom(16), os.urandom(12)
    kek = derive_kek(passphrase, salt, SCRYPT)
    return KeyFile(salt, nonce, AESGCM(kek).encrypt(nonce, data_key, WRAP_AAD), dict(SCRYPT)), data_key


def unwrap(key_file: KeyFile, passphrase: bytes) -> bytes:
    kek = derive_kek(passphrase, key_file.salt, key_file.kdf)
    try:
        return AESGCM(kek).decrypt(key_file.nonce, key_file.wrapped, WRAP_AAD)
    except InvalidTag:
        raise CryptoError("wrong passphrase") from None


def derive_kek(passphrase: bytes, salt: bytes, kdf: dict[str, int]) -> bytes:
    """scrypt (32 MiB, about 0.1 s). archive-push runs once per segment, so the
    result is cached per user in a 0600 file keyed by a hash of its inputs: the cache
    holds no more than the passphrase source on the same host already gives away."""
    tag = hashlib.sha256(b"pgsafe-kek\0" + salt + repr(sorted(kdf.items())).encode() + b"\0" + passphrase).hexdigest()
    name = f"kek-{tag[:32]}"
    cached = cache.read(name)
    if cached is not None and len(cached) == 32:
        return cached
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    kek = Scrypt(salt=salt, length=32, **kdf).derive(passphrase)
    cache.write(name, kek)
    return kek


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)
