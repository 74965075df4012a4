"""The demo page at / and API docs that work offline (Swagger UI assets served by the app)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"


def docs_assets() -> Path | None:
    """Swagger UI's files as shipped by the fastapi-offline package, when installed."""
    try:
        path = Path(str(resources.files("fastapi_offline") / "static"))
    except ModuleNotFoundError:
        return None
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def install(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    r = APIRouter(include_in_schema=False)

    @r.get("/")
    def demo() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    assets = docs_assets()
    if assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

        @r.get("/docs")
        def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - API docs",
                                       swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                       swagger_css_url="/docs-assets/swagger-ui.css",
                                       swagger_favicon_url="/docs-assets/favicon.png")

        @r.get("/redoc")
        def redoc() -> HTMLResponse:
            return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - API reference",
                                  redoc_js_url="/docs-assets/redoc.standalone.js",
                                  redoc_favicon_url="/docs-assets/favicon.png", with_google_fonts=False)
    else:
        @r.get("/docs")
        def docs_minimal() -> FileResponse:
            return FileResponse(STATIC / "docs.html")

    app.include_router(r)
