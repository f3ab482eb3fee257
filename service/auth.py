"""Named bearer tokens, compared in constant time.

Clients send ``authorization: Bearer <token>`` metadata. The server keeps only the
sha256 of each secret and compares the presented token's digest against *every*
configured digest with :func:`hmac.compare_digest` (no early exit), so neither the match
nor its position leaks through timing. The result is a :class:`Principal`: the token's
name (jobs and uploads belong to it; logs show it, never the secret) and its role.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import hmac
from collections.abc import Iterable, Sequence

from service.config import TokenConfig
from service.errors import PermissionDeniedError, UnauthenticatedError

__all__ = ["Authenticator", "Principal", "current_principal"]

_SCHEME = "bearer "


@dataclasses.dataclass(frozen=True)
class Principal:
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def owner_filter(self) -> str | None:
        """The owner to filter stored objects by (``None``: an admin sees everything)."""
        return None if self.is_admin else self.name

    def require_write(self, what: str) -> None:
        if self.role == "viewer":
            raise PermissionDeniedError(
                f"token {self.name!r} is read-only (role 'viewer') and cannot {what}"
            )


#: The caller of the RPC being handled (set by the interceptor for the handler's duration).
current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")


class Authenticator:
    def __init__(self, tokens: Iterable[TokenConfig]) -> None:
        self._entries = [
            (hashlib.sha256(t.token.encode()).digest(), Principal(t.name, t.role)) for t in tokens
        ]
        if not self._entries:
            raise ValueError("at least one token is needed")

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Principal:
        """The principal of ``authorization`` metadata.

        Raises:
            UnauthenticatedError: no or malformed header, or an unknown token.
        """
        header = next((v for k, v in metadata or () if k.lower() == "authorization"), None)
        if header is None:
            raise UnauthenticatedError(
                "missing 'authorization: Bearer <token>' metadata (see metaprune client --help)"
            )
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        if not header.lower().startswith(_SCHEME) or len(header) > 4096:
            raise UnauthenticatedError("the authorization metadata must be 'Bearer <token>'")
        digest = hashlib.sha256(header[len(_SCHEME) :].strip().encode()).digest()
        found: Principal | None = None
        for stored, principal in self._entries:  # every entry, always: constant time
            if hmac.compare_digest(stored, digest):
                found = principal
        if found is None:
            raise UnauthenticatedError("the bearer token is not valid for this server")
        return found
