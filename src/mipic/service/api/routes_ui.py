"""The budget page: ``GET /ui`` (``GET /`` redirects there) serves one HTML file, its CSS and its JS from the package.

No build step and no CDN: the script draws plain SVG from ``/info``, ``/budgets`` and ``/budgets/traffic`` and runs
its playground through ``POST /embed``. The page is public like those three; the playground sends the key the user
types as a bearer token, so nothing served here ever holds the API key.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from mipic.service.api.errors import NotFound

router = APIRouter(tags=["ui"])

# The files of src/mipic/service/ui (package data), by the name the page asks for.
UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "budgets.js": "text/javascript; charset=utf-8",
    "budgets.css": "text/css; charset=utf-8",
}
# Everything from this origin only: the page works offline, and injected markup could neither run nor phone home.
UI_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


@cache
def ui_file(name: str) -> bytes:
    return (resources.files("mipic.service") / "ui" / name).read_bytes()


def _serve(name: str) -> Response:
    return Response(ui_file(name), media_type=UI_FILES[name], headers=UI_HEADERS)


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui", include_in_schema=False)
async def page() -> Response:
    return _serve("index.html")


@router.get("/ui/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    if name not in UI_FILES or name == "index.html":
        raise NotFound(f"no UI file {name!r}", "not_found", "name")
    return _serve(name)
