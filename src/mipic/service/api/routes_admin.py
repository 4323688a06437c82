"""Admin endpoints, behind a bearer token: hot reload of the model version.

With several workers (``mipic serve --workers N``) the worker that answers reloads and then sends its parent
SIGHUP, which every worker answers by reloading the repository's CURRENT (``workers.py``); a reload to a given
``model_dir`` cannot reach the other workers and is refused (409 ``needs_single_worker``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from mipic.service.api.deps import EngineDep, SettingsDep, bearer_matches
from mipic.service.api.errors import Forbidden, SingleWorkerOnly, Unauthorized


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
async def reload(request: Request, engine: EngineDep, body: ReloadRequest | None = None) -> ReloadResponse:
    """Load the repository's CURRENT version (or ``model_dir``) beside the served one, then switch."""
    path = Path(body.model_dir) if body and body.model_dir else None
    supervisor: int | None = getattr(request.app.state, "supervisor_pid", None)
    if supervisor is not None and path is not None:
        raise SingleWorkerOnly("model_dir cannot be reloaded with several workers: point the repository's CURRENT "
                               "at the version and POST /admin/reload without a body (every worker follows)",
                               "needs_single_worker", "model_dir")
    model_id, changed = await engine.reload(path)
    if supervisor is not None:
        os.kill(supervisor, signal.SIGHUP)  # the other workers reload CURRENT too
    return ReloadResponse(model=model_id, changed=changed)
