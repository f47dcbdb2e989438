"""API keys and roles: who is asking, and what they may see.

A request carries ``Authorization: Bearer <key>``. The runtime keeps only a hash of each key
(``lookup_api_key``); the key's role decides which actions are allowed (403 otherwise) and a
``shipper`` key sees only objects of its shipper: another tenant's object answers 404, a list
filtered on another tenant is empty. See docs/api.md for the whole matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import RuntimeDep, RuntimeLike
from api.errors import Forbidden, NotFound, Unauthorized


class Role(StrEnum):
    ADMIN = "admin"
    DESK = "desk"
    FLEET = "fleet"
    SHIPPER = "shipper"


@dataclass(frozen=True, slots=True)
class Principal:
    """The holder of an API key."""

    role: Role
    shipper: str | None
    key_id: str
    name: str = ""

    @property
    def is_shipper(self) -> bool:
        return self.role is Role.SHIPPER

    def sees(self, shipper: str | None) -> bool:
        """May this key see an object of ``shipper``? Staff see every shipper's objects."""
        return not self.is_shipper or (shipper is not None and shipper == self.shipper)

    def asks_foreign(self, requested: str | None) -> bool:
        """A shipper key filtering on another shipper: the answer is empty, never theirs."""
        return self.is_shipper and requested is not None and requested != self.shipper

    def shipper_filter(self, requested: str | None) -> str | None:
        """The shipper filter a list query runs with: a shipper key always its own."""
        return self.shipper if self.is_shipper else requested

    def check_visible(self, shipper: str | None, what: str, ident: str) -> None:
        """404, as if it did not exist, when the object belongs to another tenant."""
        if not self.sees(shipper):
            context: dict[str, Any] = {f"{what}_id": ident}
            raise NotFound(f"no such {what}", **context)

    @property
    def actor(self) -> str:
        """Who acts, as recorded in histories: the key's name (a ``by`` in a request body
        is ignored: contract v2 §5)."""
        return self.name or f"key:{self.key_id}"


bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key: `Authorization: Bearer <key>`.",
)


def _principal(runtime: RuntimeLike, secret: str) -> Principal | None:
    found = runtime.lookup_api_key(secret)
    if not found:
        return None
    try:
        role = Role(found["role"])
    except (KeyError, ValueError):
        return None
    shipper = found.get("shipper")
    if role is Role.SHIPPER and not shipper:
        return None  # a shipper key bound to no shipper would see nothing: refuse it
    return Principal(
        role,
        shipper if role is Role.SHIPPER else None,
        str(found["key_id"]),
        str(found.get("name") or ""),
    )


def principal_from_request(request: Request) -> Principal | None:
    """The principal of a request, or None (used where dependencies have not run)."""
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    return _principal(request.app.state.runtime, secret.strip())


def authenticate(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller's principal; 401 without a known key."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized("missing API key: send Authorization: Bearer <key>")
    principal = _principal(runtime, credentials.credentials)
    if principal is None:
        raise Unauthorized("unknown API key")
    return principal


def require(*roles: Role) -> Callable[[Principal], Principal]:
    """A dependency admitting only these roles (403 for the others)."""
    allowed = frozenset(roles)
    names = ", ".join(r.value for r in roles)

    def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if principal.role not in allowed:
            raise Forbidden(f"a {principal.role.value} key may not do this (needs: {names})")
        return principal

    return dependency


AnyKey = Annotated[Principal, Depends(authenticate)]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
Staff = Annotated[Principal, Depends(require(Role.ADMIN, Role.DESK, Role.FLEET))]
Fleet = Annotated[Principal, Depends(require(Role.ADMIN, Role.FLEET))]
Desk = Annotated[Principal, Depends(require(Role.ADMIN, Role.DESK))]
DeskOrTenant = Annotated[Principal, Depends(require(Role.ADMIN, Role.DESK, Role.SHIPPER))]
AdminOrTenant = Annotated[Principal, Depends(require(Role.ADMIN, Role.SHIPPER))]
