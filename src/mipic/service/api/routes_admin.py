"""Admin endpoints, behind a bearer token: hot reload of the model version."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from mipic.service.api.deps import EngineDep, SettingsDep, bearer_matches
from mipic.service.api.errors import Forbidden, Unauthorized


async def require_admin(request: Request, settings: SettingsDep) -> None:
    """401 without credentials, 403 with wrong ones or when no admin token is configured."""
    if "authorization" not in request.headers:
        raise Unauthorized("admin endpoints need an Authorization: Bearer token", "missing_token")
    if settings.admin_token is None:
        raise Forbidden("admin API is disabled (no admin token configured)", "admin_disabled")
    if not bearer_matches(request, settings.admin_token.get_secret_value()):
        raise Forbidden("invalid admin token", "invalid_token")


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_dir: str | None = None


class ReloadResponse(BaseModel):
    model: str
    changed: bool


@router.post("/reload", response_model=ReloadResponse)
async def reload(engine: EngineDep, body: ReloadRequest | None = None) -> ReloadResponse:
    """Load the repository's CURRENT version (or ``model_dir``) beside the served one, then switch."""
    path = Path(body.model_dir) if body and body.model_dir else None
    model_id, changed = await engine.reload(path)
    return ReloadResponse(model=model_id, changed=changed)
