"""Caller keys: who is calling, which services it may call, and the limits its key carries.

Keys are declared in the ``AIP_CONFIG`` file by the SHA-256 of the key, never the key itself::

    [keys.team-search]
    sha256 = "<64 hex characters>"          # aiplatform-server keygen prints a key and this line
    services = ["echo", "coze*"]            # glob patterns of the services the key may call
    requests_per_minute = 600               # each limit is optional
    tokens_per_minute = 100000
    tokens_per_day = 2000000
    max_concurrent_calls = 8

A caller sends ``authorization: Bearer <key>`` or ``x-api-key: <key>``. The key presented is
hashed and its digest compared with every configured digest by ``hmac.compare_digest``: how
long the check takes says nothing about how close a guess came.
"""

from __future__ import annotations

import contextvars
import fnmatch
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from providers.errors import PermissionDenied, Unauthenticated

#: The metadata keys a caller key may come in.
AUTHORIZATION_KEY, API_KEY_KEY = "authorization", "x-api-key"
_BEARER_PREFIX = "bearer "
#: A key name: what metrics, the access log and errors call a caller (never the key itself).
KEY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
#: The limits a key may carry, by their names in the file (each optional).
KEY_LIMITS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "max_concurrent_calls")
#: The prefix of keys ``keygen`` makes, so that a leaked one is recognisable (secret scanners).
KEY_PREFIX = "aip_"


class KeyEntry(BaseModel):
    """One ``[keys.<name>]`` table of the AIP_CONFIG file."""

    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="SHA-256 of the key, 64 hex characters")
    services: list[str] = Field(min_length=1, description='glob patterns of the services it may call; ["*"]: all')
    requests_per_minute: int | None = Field(None, ge=1, description="calls to services in any 60 s")
    tokens_per_minute: int | None = Field(None, ge=1, description="tokens (input and output) in any 60 s")
    tokens_per_day: int | None = Field(None, ge=1, description="tokens (input and output) in any 24 h")
    max_concurrent_calls: int | None = Field(None, ge=1, description="calls to services in flight at once")

    @property
    def limited(self) -> bool:
        """Whether any limit applies to the key's calls."""
        return any(getattr(self, name) is not None for name in KEY_LIMITS)

    @field_validator("services")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not pattern or not pattern.isprintable() or len(pattern) > 128:
                raise ValueError(f"{pattern!r} is no service name or glob pattern")
        return patterns


@dataclass(frozen=True, slots=True)
class CallerKey:
    """A configured key: its name, digest, the services it may call and its limits (None: none)."""

    name: str
    digest: bytes
    services: tuple[str, ...]
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    max_concurrent_calls: int | None = None

    @classmethod
    def from_entry(cls, name: str, entry: KeyEntry) -> CallerKey:
        return cls(
            name=name,
            digest=bytes.fromhex(entry.sha256),
            services=tuple(entry.services),
            **{limit: getattr(entry, limit) for limit in KEY_LIMITS},
        )

    def may_call(self, service: str) -> bool:
        """Whether the key's patterns admit ``service`` (case-sensitive, as service names are)."""
        return any(fnmatch.fnmatchcase(service, pattern) for pattern in self.services)

    def check_access(self, service: str) -> None:
        """Raise PermissionDenied unless the key may call ``service``; the message does not say whether it exists."""
        if not self.may_call(service):
            raise PermissionDenied(
                f"the key {self.name!r} may not call the service {service[:64]!r} "
                "(its services patterns in the AIP_CONFIG file do not admit it)"
            )

    @property
    def limited(self) -> bool:
        """Whether any limit applies to the key's calls."""
        return any(getattr(self, name) is not None for name in KEY_LIMITS)


#: The caller of the call running in this task, set by server/interceptors.py for the servicer
#: (ListServices shows a caller only its services); None when the gateway runs without keys.
current_caller: contextvars.ContextVar[CallerKey | None] = contextvars.ContextVar("current_caller", default=None)


class CallerKeys:
    """The configured keys; ``identify`` finds the caller of a call by its metadata."""

    def __init__(self, keys: Iterable[CallerKey]) -> None:
        self._keys = tuple(keys)

    @classmethod
    def from_entries(cls, entries: Mapping[str, KeyEntry]) -> CallerKeys:
        return cls(CallerKey.from_entry(name, entry) for name, entry in entries.items())

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def identify(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> CallerKey:
        """The key the call presents.

        Raises:
            Unauthenticated: no key, or none configured matches it.
        """
        presented = _presented_key(metadata or ())
        if presented is None:
            raise Unauthenticated(
                "a caller key is required: send it in the metadata as 'x-api-key: <key>', "
                "or in 'authorization' (scheme Bearer)"
            )
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: CallerKey | None = None
        # Every digest is compared, match or not: the time taken does not depend on which matched.
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        if found is None:
            raise Unauthenticated("the caller key is not valid")
        return found


def _presented_key(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    for name, value in metadata:
        if not isinstance(value, str):
            continue
        if name == AUTHORIZATION_KEY:
            if value[: len(_BEARER_PREFIX)].lower() == _BEARER_PREFIX and value[len(_BEARER_PREFIX) :].strip():
                return value[len(_BEARER_PREFIX) :].strip()
        elif name == API_KEY_KEY and value.strip():
            return value.strip()
    return None


def new_key() -> tuple[str, str]:
    """A new random key (256 bits) and the SHA-256 hex digest to configure."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()


def keygen_text(name: str = "my-team") -> str:
    """What ``aiplatform-server keygen`` prints: the key once, and the table to configure it."""
    key, digest = new_key()
    return (
        f"key (give it to the caller; it is shown only now): {key}\n"
        "\n"
        "# for the AIP_CONFIG file:\n"
        f"[keys.{name}]\n"
        f'sha256 = "{digest}"\n'
        'services = ["*"]\n'
    )
