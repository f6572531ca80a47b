"""/docs and /redoc load nothing from a CDN: every asset they name is served by the API itself."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_api
from api.dependencies import AccessKeys, Gateway

# What each page must load, and what the asset must be to run (not an empty stub).
PAGES = {
    "/docs": {
        "/static/vendor/swagger-ui-bundle.js": ("text/javascript", b"SwaggerUIBundle"),
        "/static/vendor/swagger-ui.css": ("text/css", b".swagger-ui"),
        "/static/vendor/swagger-ui-favicon-32x32.png": ("image/png", b"\x89PNG"),
    },
    "/redoc": {
        "/static/vendor/redoc.standalone.js": ("text/javascript", b"spec-url"),
        "/static/vendor/swagger-ui-favicon-32x32.png": ("image/png", b"\x89PNG"),
    },
}
# src="..." and href="..." of the page, and the spec Swagger UI (url: '...') or ReDoc reads.
URLS = re.compile(r"""(?:src|href|spec-url)=["']([^"']+)["']|url: ?["']([^"']+)["']""")


def app_client(root_path: str = "") -> TestClient:
    # The pages are built from the routes alone: no collaborator is called.
    gateway = Gateway(
        sink=None,  # type: ignore[arg-type]
        keys=AccessKeys(frozenset(), frozenset()),
        event_log=None,  # type: ignore[arg-type]
        stages=None,  # type: ignore[arg-type]
    )
    return TestClient(create_api(gateway), root_path=root_path)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with app_client() as opened:
        yield opened


def loaded(html: str) -> set[str]:
    return {a or b for a, b in URLS.findall(html)}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_a_docs_page_names_only_assets_of_the_api(client: TestClient, page: str) -> None:
    answer = client.get(page)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert loaded(answer.text) == {*PAGES[page], "/openapi.json"}
    assert "cdn" not in answer.text.lower() and "googleapis" not in answer.text
    # What the page's scripts ask for at run time is held to this API as well.
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    spec = client.get("/openapi.json")
    assert spec.status_code == 200 and spec.json()["paths"]


@pytest.mark.parametrize(("page", "asset"), [(p, a) for p, assets in PAGES.items() for a in assets])
def test_each_asset_answers_with_its_type(client: TestClient, page: str, asset: str) -> None:
    content_type, marker = PAGES[page][asset]
    answer = client.get(asset)
    assert answer.status_code == 200, asset
    assert answer.headers["content-type"].partition(";")[0] == content_type
    assert marker in answer.content


def test_behind_a_prefix_the_pages_keep_it() -> None:
    with app_client(root_path="/journeys") as prefixed:
        for page, assets in PAGES.items():
            expected = {f"/journeys{url}" for url in [*assets, "/openapi.json"]}
            assert loaded(prefixed.get(page).text) == expected
