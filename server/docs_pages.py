"""/docs (Swagger UI) from files this server ships: nothing is loaded from a CDN.

FastAPI's own page fetches Swagger UI's JavaScript and CSS from jsDelivr, so offline it is blank. This is FastAPI's
documented self-hosting recipe (get_swagger_ui_html with local URLs), with the files from the fastapi-offline
package, which ships them (its static/ folder), served under /static/docs/ (open without the API key, like the
page's own files). create_app builds the app with docs_url=None and redoc_url=None and calls install_docs. There is
no /redoc: ReDoc's bundle fetches its logo from its vendor's CDN whatever it is given, so it cannot be offline.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"  # swagger-ui-bundle.js, swagger-ui.css, favicon.png
ASSETS_URL = "/static/docs"


def install_docs(app: FastAPI) -> None:
    """The documentation page and its assets; mounted before /static, which would otherwise take the path."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")
    openapi_url, redirect_url = app.openapi_url, app.swagger_ui_oauth2_redirect_url
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=redirect_url,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()


def install_served_model_examples(app: FastAPI) -> None:
    """The OpenAPI schema with the served models' names as the examples of every `model` field and parameter: the
    schema says which names this server answers to (a client's first question; and what a fuzzer reads to reach a
    model's routes rather than the 404 of an unknown name). Built once, when first asked for, after start-up."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            names = [served.name for served in app.state.models]
            for component in schema.get("components", {}).get("schemas", {}).values():
                if "model" in component.get("properties", {}):
                    component["properties"]["model"]["examples"] = names
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                for parameter in operation.get("parameters", []):
                    if parameter["name"] == "model":
                        parameter["schema"]["examples"] = names
        return app.openapi_schema

    app.openapi = openapi
