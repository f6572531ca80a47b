"""The OpenAPI pages, /docs (Swagger UI) and /redoc, with their assets served from the package.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they stay blank on a
machine without internet. The same npm files are vendored in api/static/vendor/
(versions and licenses in its README) and served under /static like the dashboard's.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

VENDOR = "/static/vendor"
SWAGGER_JS = f"{VENDOR}/swagger-ui-bundle.js"
SWAGGER_CSS = f"{VENDOR}/swagger-ui.css"
REDOC_JS = f"{VENDOR}/redoc.standalone.js"
FAVICON = f"{VENDOR}/swagger-ui-favicon-32x32.png"
# The pages may load from this API only. ReDoc's sidebar shows its vendor's logo
# from the vendor's CDN, unconditionally: the browser refuses it (the image hides
# itself on error) instead of asking a CDN. Inline: FastAPI's page script and
# the styles both UIs inject; blob: ReDoc's search worker.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


def install_docs(app: FastAPI) -> None:
    """Serve /docs and /redoc (create the app with ``docs_url=None, redoc_url=None``)."""
    title = f"{app.title} - API"

    def local(request: Request, path: str) -> str:
        # Behind a proxy that strips a prefix, every URL the page loads keeps it.
        return request.scope.get("root_path", "").rstrip("/") + path

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return _local_only(
            get_swagger_ui_html(
                openapi_url=local(request, app.openapi_url or "/openapi.json"),
                title=title,
                swagger_js_url=local(request, SWAGGER_JS),
                swagger_css_url=local(request, SWAGGER_CSS),
                swagger_favicon_url=local(request, FAVICON),
            )
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return _local_only(
            get_redoc_html(
                openapi_url=local(request, app.openapi_url or "/openapi.json"),
                title=title,
                redoc_js_url=local(request, REDOC_JS),
                redoc_favicon_url=local(request, FAVICON),
                with_google_fonts=False,  # a font CDN: the system fonts do
            )
        )


def _local_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page
