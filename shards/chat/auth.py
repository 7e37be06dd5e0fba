"""Passwords and session tokens for the chat API (guarantee 8: identity).

Passwords are stored as ``scrypt$n$r$p$salt_b64$hash_b64`` (stdlib hashlib.scrypt, random salt)
and verified in constant time; an unknown user costs the same hash, so login timing does not tell
which users exist. Session tokens are 256 random bits; only their SHA-256 is ever stored, since
sessions live in replicated state, snapshots and analytics copies, and a random token needs no
slow hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from typing import Final

import grpc

from shards.chat.api import ApiError

SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_SALT_BYTES: Final = 16
_KEY_BYTES: Final = 32
_MAX_SCRYPT_MEMORY: Final = 64 * 1024 * 1024
"""A stored hash asking for more scrypt memory than this is refused (a tampered string must not
make the server allocate gigabytes); ours needs 128 * n * r = 16 MiB."""
_SECRET: Final = re.compile(r"[A-Za-z0-9_-]{32,128}")
"""The random part of a token (43 URL-safe base64 characters as issued)."""
_USER: Final = re.compile(r"[a-z0-9_-]{1,32}")
TOKEN_SEPARATOR: Final = "."
"""Between the user and the random part of a token; never in a name (``[a-z0-9_-]``)."""

# ---------------------------------------------------------------------------------------------
# Passwords and session tokens.
# ---------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt_b64$hash_b64`` of ``password`` with a fresh random salt (``salt`` is
    for tests). About 50 ms of CPU and 16 MiB: run it off the event loop."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    key = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=_KEY_BYTES,
        maxmem=2 * _MAX_SCRYPT_MEMORY,
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


_DUMMY_HASH: Final = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(bytes(16))}${_b64(bytes(32))}"
"""Verified against when the user does not exist, so a login takes as long either way."""


def verify_password(password: str, encoded: str | None) -> bool:
    """Whether ``password`` matches ``encoded`` (a :func:`hash_password` string), compared in
    constant time. ``None`` (no such user) still spends one hash and answers False, so response
    times do not reveal which users exist. A malformed or tampered string is False, never an
    exception."""
    parsed = _parse_hash(encoded if encoded is not None else _DUMMY_HASH)
    if parsed is None:
        return False
    n, r, p, salt, expected = parsed
    try:
        key = hashlib.scrypt(
            password.encode("utf-8"),
            salt=salt,
            n=n,
            r=r,
            p=p,
            dklen=len(expected),
            maxmem=2 * _MAX_SCRYPT_MEMORY,
        )
    except (ValueError, MemoryError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(key, expected) and encoded is not None


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    if not all(part.isascii() and part.isdigit() for part in parts[1:4]):
        return None
    n, r, p = (int(part) for part in parts[1:4])
    if n < 2 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
        return None
    if 128 * n * r > _MAX_SCRYPT_MEMORY:
        return None
    try:
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except (binascii.Error, ValueError):
        return None
    if not salt or not 16 <= len(key) <= 64:
        return None
    return n, r, p, salt, key


def new_session_token(user: str) -> str:
    """A fresh bearer token ``<user>.<random>``: 256 random bits (43 URL-safe base64 chars)
    after the user's name, so any node can find the group that holds the session from the token
    alone. Only its digest is stored, so the readable prefix gives nothing away."""
    return f"{user}{TOKEN_SEPARATOR}{secrets.token_urlsafe(32)}"


def token_digest(token: str) -> str:
    """What the server stores for a token (SHA-256, hex); see the module docstring for why."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[str, str]:
    """``(user, token)`` of the ``authorization: Bearer <user>.<random>`` metadata;
    UNAUTHENTICATED naming ``authorization`` when it is missing, repeated or malformed. Whether
    the session is open is the caller's check."""
    values = [v for k, v in metadata or () if k.lower() == "authorization"]
    if len(values) != 1:
        problem = "missing" if not values else "given more than once"
        raise ApiError(grpc.StatusCode.UNAUTHENTICATED, "authorization", problem)
    raw = values[0]
    value = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    scheme, _, token = value.partition(" ")
    user, _, secret = token.partition(TOKEN_SEPARATOR)
    if scheme.lower() != "bearer" or not _USER.fullmatch(user) or not _SECRET.fullmatch(secret):
        raise ApiError(
            grpc.StatusCode.UNAUTHENTICATED,
            "authorization",
            "expected 'Bearer <token>' with a token from Login",
        )
    return user, token


def login_failed() -> ApiError:
    """The one answer for an unknown user and a wrong password."""
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, "password", "unknown user or wrong password")
