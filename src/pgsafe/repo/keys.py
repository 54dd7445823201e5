"""Passphrases and the repository's data key (see codec/crypto.py for the scheme)."""

from __future__ import annotations

import json
import os
from typing import Any

from pgsafe.errors import PassphraseError, RepositoryError

KEY_FILE = "keys.json"


def passphrase(repo: Any) -> bytes:
    """The passphrase of an encrypted repository, from its configured source."""
    where = f"repository {repo.name!r}"
    if repo.passphrase_env:
        value = os.environ.get(repo.passphrase_env)
        if not value:
            raise PassphraseError(f"{where} is encrypted: set the passphrase in ${repo.passphrase_env}")
        return value.encode()
    if repo.passphrase_file:
        return read_passphrase_file(repo.passphrase_file, f"{where}: passphrase_file")
    if repo.passphrase_command:
        import subprocess

        try:
            out = subprocess.run(repo.passphrase_command, shell=True, capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise PassphraseError(f"{where}: passphrase_command timed out") from None
        if out.returncode != 0 or not out.stdout.strip():
            raise PassphraseError(f"{where}: passphrase_command failed (exit {out.returncode}) or printed nothing")
        return out.stdout.rstrip(b"\r\n")
    raise PassphraseError(f"{where} is encrypted: set passphrase_env, passphrase_file or passphrase_command")


def read_passphrase_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            value = f.read().rstrip(b"\r\n")
    except OSError as exc:
        raise PassphraseError(f"{what} {path}: cannot read it: {exc.strerror}") from None
    if not value:
        raise PassphraseError(f"{what} {path} is empty")
    return value


def load_data_key(storage: Any, repo: Any) -> bytes:
    from pgsafe.codec.crypto import CryptoError, KeyFile, unwrap

    try:
        doc = json.loads(storage.read(KEY_FILE))
        key_file = KeyFile.from_json(doc)
    except FileNotFoundError:
        raise RepositoryError(f"repository {repo.name!r} is encrypted but its {KEY_FILE} is missing") from None
    except (ValueError, KeyError, TypeError):
        raise RepositoryError(f"repository {repo.name!r}: {KEY_FILE} is damaged") from None
    try:
        return unwrap(key_file, passphrase(repo))
    except CryptoError:
        raise PassphraseError(f"wrong passphrase for repository {repo.name!r}") from None


def write_key_file(storage: Any, new_passphrase: bytes, data_key: bytes | None, overwrite: bool) -> bytes:
    """Wrap the data key (a new one when None) with the passphrase; returns the key."""
    from pgsafe.codec.crypto import new_key_file

    key_file, key = new_key_file(new_passphrase, data_key)
    w = storage.writer(KEY_FILE)
    w.write(json.dumps(key_file.to_json(), indent=1).encode() + b"\n")
    if not w.commit(overwrite=overwrite):
        raise RepositoryError(f"{KEY_FILE} already exists")
    return key
