"""``/v1/keys``: an admin makes, lists and revokes API keys; any key asks who it is.

Only a hash of each key is stored; no answer but the one that makes a key carries its
secret, and none carries the hash.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from fastapi import status as http_status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.auth import Admin, AnyKey
from api.deps import RuntimeDep
from api.errors import ERROR_RESPONSES, ApiError, ErrorResponse
from api.params import AnyId
from api.render import times_to_iso

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=ERROR_RESPONSES)

_KEY_TIMES = ("created_at", "last_used_at", "revoked_at")


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["admin", "desk", "fleet", "shipper"]
    shipper: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")
    name: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="who acts with this key, recorded in alarm histories (e.g. desk-07); "
        "unique among keys not revoked",
    )
    label: str | None = Field(None, max_length=64, description="old name of `name`")

    @model_validator(mode="after")
    def _shipper_iff_shipper_role(self) -> KeyIn:
        if (self.role == "shipper") != (self.shipper is not None):
            raise ValueError("a shipper key needs a shipper; the other roles take none")
        if self.name is not None and self.label is not None and self.name != self.label:
            raise ValueError("give the key's name once (`label` is its old spelling)")
        return self


class KeyInfo(BaseModel):
    """A key as listed: never its secret nor its hash."""

    key_id: str
    name: str
    role: str
    shipper: str | None
    created_at: str | None = None
    last_used_at: str | None = None
    revoked_at: str | None = None


class KeyOut(KeyInfo):
    key: str = Field(description="the secret: shown once, stored only as a hash")
    label: str | None = Field(None, description="the same as `name` (old spelling)")


class WhoAmI(BaseModel):
    key_id: str
    name: str
    role: str
    shipper: str | None


@router.post("", status_code=http_status.HTTP_201_CREATED, response_model=KeyOut)
def create_key(body: KeyIn, runtime: RuntimeDep, principal: Admin) -> dict:
    """A new API key for a role (a ``shipper`` key is bound to one shipper); 409 for a name
    another key not revoked has."""
    made = runtime.create_api_key(body.role, body.shipper, body.name or body.label)
    return {**times_to_iso(made, _KEY_TIMES), "label": made["name"]}


@router.get("", response_model=list[KeyInfo])
def list_keys(runtime: RuntimeDep, principal: Admin) -> list[dict]:
    """Every key, oldest first, revoked ones with ``revoked_at``."""
    return [times_to_iso(k, _KEY_TIMES) for k in runtime.list_api_keys()]


@router.get("/me", response_model=WhoAmI)
def who_am_i(principal: AnyKey) -> dict:
    """The calling key: its id, name, role and shipper (the desk page's sign-in)."""
    return {
        "key_id": principal.key_id,
        "name": principal.actor,
        "role": principal.role.value,
        "shipper": principal.shipper,
    }


@router.delete(
    "/{key_id}",
    status_code=http_status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={409: {"model": ErrorResponse, "description": "A key cannot revoke itself"}},
)
def revoke_key(key_id: AnyId, runtime: RuntimeDep, principal: Admin) -> Response:
    """Revoke a key: every process refuses it (401) from now on. It stays listed (alarm
    histories name it). An admin cannot revoke the key it is using."""
    if key_id == principal.key_id:
        raise ApiError("a key cannot revoke itself", status=409, code="conflict")
    runtime.revoke_api_key(key_id)
    return Response(status_code=http_status.HTTP_204_NO_CONTENT)
