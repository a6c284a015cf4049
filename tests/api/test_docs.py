"""/api/v1/docs works offline: Swagger UI from our own static files, no CDN or other outside URL."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.settings = ""
        self._in_settings = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.refs.append(value)
        self._in_settings = tag == "script" and ("id", "swagger-settings") in attrs

    def handle_data(self, data: str) -> None:
        if self._in_settings:
            self.settings += data

    def handle_endtag(self, tag: str) -> None:
        self._in_settings = False


def test_the_docs_page_references_only_our_own_static_files() -> None:
    client = Client()
    resp = client.get("/api/v1/docs")
    assert resp.status_code == 200
    html = resp.content.decode()
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    parser = _Refs()
    parser.feed(html)
    assert sorted(parser.refs) == [
        "/static/ninja/favicon.png", "/static/ninja/favicon.svg", "/static/ninja/swagger-ui-bundle.js",
        "/static/ninja/swagger-ui-init.js", "/static/ninja/swagger-ui.css",
    ]
    assert json.loads(parser.settings) == {
        "layout": "BaseLayout", "deepLinking": True, "validatorUrl": None, "url": "/api/v1/openapi.json",
    }
    for ref in parser.refs:
        static = client.get(ref)
        assert static.status_code == 200, ref
        body = b"".join(static.streaming_content) if static.streaming else static.content  # type: ignore[attr-defined]
        assert len(body) > 100, ref
    bundle = client.get("/static/ninja/swagger-ui-bundle.js")
    assert bundle["Content-Type"].startswith(("text/javascript", "application/javascript"))
    assert re.search(rb"SwaggerUIBundle", b"".join(bundle.streaming_content))  # type: ignore[attr-defined]
    assert client.get("/api/v1/openapi.json").status_code == 200
