"""The page at ``/``: try every model the server serves and watch its queue, in a browser, with
nothing to install and nothing fetched from elsewhere (no CDN, no build step: three files in
``serving/page/``). Its data routes: ``GET /v1/models`` (what can be asked, behind the API
token like the v2 metadata) and ``GET /v1/stats`` (the live panel's numbers, open like
``/metrics``, which holds the same).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from visionloop.serving.stats import snapshot

__all__ = ["router"]

_FILES = {
    "page.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
}
# The page runs only its own script and style; uploads are shown from blob: URLs and answers
# from data: URLs. Nothing else may load or run.
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _file(name: str) -> bytes:
    return (resources.files("visionloop.serving") / "page" / name).read_bytes()


def router(state: Any, authorise: Callable[[Any, Request], None]) -> APIRouter:
    api = APIRouter(tags=["page"])
    headers = {"Content-Security-Policy": _POLICY, "X-Content-Type-Options": "nosniff",
               "Cache-Control": "no-cache"}  # fmt: skip

    @api.get("/", include_in_schema=False)
    async def page() -> Response:
        """The page."""
        return Response(_file("index.html"), media_type="text/html; charset=utf-8",
                        headers=headers)  # fmt: skip

    @api.get("/page/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        """The page's script and style (only these two names)."""
        if name not in _FILES:
            return JSONResponse({"error": f"no page file {name!r}"}, status_code=404)
        return Response(_file(name), media_type=_FILES[name], headers=headers)

    @api.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        """Each model: its ready versions and the serving version's description."""
        authorise(state, request)
        names = state.fleet.names() if state.fleet is not None else [state.model_name]
        listed = []
        for name in names:
            entry: dict[str, Any] = {"name": name, "versions": state.versions(name)}
            try:
                entry["serving"] = state.runner_for(name).model.describe()
            except Exception as exc:  # a model not ready is listed with why
                entry["error"] = str(exc)
            listed.append(entry)
        return {"models": listed, "max_upload_bytes": state.limits.max_bytes,
                "max_request_bytes": state.settings.max_request_bytes,
                "max_files": state.settings.max_files}  # fmt: skip

    @api.get("/v1/stats")
    async def stats() -> dict[str, Any]:
        """Cumulative per-model counters (the page takes rates and windows from two)."""
        return snapshot(state.metrics)

    return api
