"""The pages for people: ``/`` (where things are: the dashboard at ``/ui``, the docs),
``/docs`` (Swagger UI), ``/redoc`` (ReDoc).

The pages load their JavaScript, CSS and icon from this server, under :data:`ASSETS_PATH`:
the files the ``fastapi-offline`` package ships. Nothing comes from a CDN, so the pages work
offline and behind a firewall, and a browser never tells a third party who reads them. Like
``/openapi.json`` they need no API key: they show the public schema and nothing else.
"""

from __future__ import annotations

import html
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles

from ... import __about__

__all__ = ["ASSETS_PATH", "DOCS_PATH", "REDOC_PATH", "install_docs", "links"]

NAME = "openclaw-orchestrator"
DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/docs/assets"
HEALTH_PATH = "/api/health/check"
UI_PATH = "/ui"
SWAGGER_UI_PARAMETERS: dict[str, Any] = {"validatorUrl": None}
"""Swagger UI's validator badge would send the schema's URL to validator.swagger.io."""

pages = APIRouter(include_in_schema=False)


def links(root_path: str, openapi_path: str) -> dict[str, str]:
    """Where the docs, the schema and the liveness check are, under ``root_path``."""
    return {
        "dashboard": root_path + UI_PATH,
        "docs": root_path + DOCS_PATH,
        "redoc": root_path + REDOC_PATH,
        "openapi": root_path + openapi_path,
        "health": root_path + HEALTH_PATH,
    }


def install_docs(app: FastAPI) -> None:
    """Add ``/``, ``/docs``, ``/redoc`` and the assets to ``app`` (built with
    ``docs_url=None, redoc_url=None``, so FastAPI's CDN pages are not there)."""
    assets = StaticFiles(directory=str(files("fastapi_offline") / "static"))
    app.mount(ASSETS_PATH, assets, name="docs-assets")
    app.include_router(pages)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def _openapi_path(request: Request) -> str:
    return str(request.app.openapi_url)


@pages.get(DOCS_PATH)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over ``/openapi.json``, with same-origin assets."""
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=root + _openapi_path(request),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
    )


@pages.get(REDOC_PATH)
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc over ``/openapi.json``, with same-origin assets and no web fonts."""
    root = _root(request)
    return get_redoc_html(
        openapi_url=root + _openapi_path(request),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
        with_google_fonts=False,
    )


@pages.get("/")
async def index(request: Request) -> Response:
    """Links to the docs, the schema and the liveness check: JSON, or HTML for a browser."""
    root = _root(request)
    found = links(root, _openapi_path(request))
    if "text/html" in request.headers.get("accept", ""):
        return HTMLResponse(_index_html(root, found))
    return JSONResponse({"name": NAME, "version": __about__.__version__, **found})


def _index_html(root: str, found: dict[str, str]) -> str:
    items = "".join(
        f'<li>{what}: <a href="{html.escape(url)}">{html.escape(url)}</a></li>'
        for what, url in found.items()
    )
    title = f"{NAME} {html.escape(__about__.__version__)}"
    icon = html.escape(f"{root}{ASSETS_PATH}/favicon.png")
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title>'
        f'<link rel="icon" href="{icon}"></head>'
        f"<body><h1>{title}</h1><ul>{items}</ul></body></html>"
    )
