"""``POST /v1/keys``: an admin makes API keys; only a hash of each is stored."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi import status as http_status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.auth import Admin
from api.deps import RuntimeDep
from api.errors import ERROR_RESPONSES

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=ERROR_RESPONSES)


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["admin", "desk", "fleet", "shipper"]
    shipper: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")
    label: str | None = Field(None, max_length=200)

    @model_validator(mode="after")
    def _shipper_iff_shipper_role(self) -> KeyIn:
        if (self.role == "shipper") != (self.shipper is not None):
            raise ValueError("a shipper key needs a shipper; the other roles take none")
        return self


class KeyOut(BaseModel):
    key: str = Field(description="the secret: shown once, stored only as a hash")
    key_id: str
    role: str
    shipper: str | None
    label: str | None = None


@router.post("", status_code=http_status.HTTP_201_CREATED, response_model=KeyOut)
def create_key(body: KeyIn, runtime: RuntimeDep, principal: Admin) -> dict:
    """A new API key for a role (a ``shipper`` key is bound to one shipper)."""
    made = runtime.create_api_key(body.role, body.shipper, body.label)
    return {**made, "label": body.label}
