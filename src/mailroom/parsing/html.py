"""Safe HTML for display (nh3 allow-list) and HTML -> text.

``sanitize_html`` keeps layout (tables, fonts, safe inline styles) and removes everything able to run
code, submit data, navigate the viewer or load a tracker: scripts, event handlers, forms, frames,
``<base>``, ``<meta refresh>``, ``javascript:``/``data:`` URLs, ``<style>`` blocks and style
properties outside an allow-list (``position:fixed`` overlays, ``url(...)`` loads). ``cid:`` images are
rewritten through ``cid_url``; remote images are blocked unless ``allow_remote``: their URL is moved
to ``data-mr-remote-src`` so the UI can offer "show images".
"""

from __future__ import annotations

import contextvars
import html as htmllib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

import nh3

ALLOWED_TAGS = frozenset(
    {
        "a", "abbr", "acronym", "address", "b", "bdi", "bdo", "big", "blockquote", "br", "caption", "center",
        "cite", "code", "col", "colgroup", "dd", "del", "dfn", "div", "dl", "dt", "em", "figcaption", "figure",
        "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p",
        "pre", "q", "s", "samp", "small", "span", "strike", "strong", "sub", "sup", "table", "tbody", "td",
        "tfoot", "th", "thead", "tr", "tt", "u", "ul", "var", "wbr", "section", "article", "header", "footer",
        "main", "nav", "aside", "details", "summary", "time",
    }
)  # fmt: skip

# Removed together with their content.
CLEAN_CONTENT_TAGS = frozenset(
    {"script", "style", "title", "template", "iframe", "object", "embed", "noscript", "svg", "math", "xml",
     "frameset", "frame", "noframes", "applet", "select", "textarea", "button", "head", "noembed", "xmp",
     "plaintext", "canvas", "audio", "video"}
)  # fmt: skip

_COMMON_ATTRS = {"style", "dir", "lang", "title", "align", "valign", "width", "height", "bgcolor", "class"}
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "*": _COMMON_ATTRS,
    "a": {"href", "name", "target"},
    "img": {"src", "alt", "border", "hspace", "vspace"},
    "font": {"color", "face", "size"},
    "table": {"border", "cellpadding", "cellspacing", "frame", "rules", "summary"},
    "td": {"colspan", "rowspan", "nowrap", "headers", "scope", "abbr"},
    "th": {"colspan", "rowspan", "nowrap", "headers", "scope", "abbr"},
    "col": {"span"},
    "colgroup": {"span"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value", "type"},
    "blockquote": {"cite", "type"},
    "q": {"cite"},
    "del": {"cite", "datetime"},
    "ins": {"cite", "datetime"},
    "time": {"datetime"},
    "hr": {"size", "noshade"},
    "details": {"open"},
}

ALLOWED_STYLE_PROPERTIES = frozenset(
    {
        "color", "background-color", "font", "font-family", "font-size", "font-style", "font-variant",
        "font-weight", "text-align", "text-decoration", "text-indent", "text-transform", "line-height",
        "letter-spacing", "word-spacing", "white-space", "vertical-align", "direction", "unicode-bidi",
        "width", "height", "max-width", "min-width", "max-height", "min-height",
        "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
        "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
        "border", "border-top", "border-right", "border-bottom", "border-left", "border-color", "border-style",
        "border-width", "border-top-color", "border-top-style", "border-top-width", "border-bottom-color",
        "border-bottom-style", "border-bottom-width", "border-left-color", "border-left-style",
        "border-left-width", "border-right-color", "border-right-style", "border-right-width",
        "border-collapse", "border-spacing", "border-radius", "table-layout", "caption-side", "empty-cells",
        "list-style-type", "list-style-position", "display", "float", "clear", "overflow", "overflow-wrap",
        "word-break", "word-wrap", "text-overflow",
    }
)  # fmt: skip

URL_SCHEMES = frozenset({"http", "https", "mailto", "tel", "cid"})
_SAFE_HREF = re.compile(r"^(?:https?://|mailto:|tel:|#)", re.I)
_REMOTE = re.compile(r"^(?:https?:)?//", re.I)
_BAD_STYLE = re.compile(r"url\s*\(|expression|javascript:|@import|behavior|-moz-binding|\\", re.I)
_REMOTE_MARK = "mr-remote:"


@dataclass(frozen=True, slots=True)
class SafeHtml:
    html: str
    has_remote_images: bool
    cids: tuple[str, ...]  # Content-IDs referenced by <img src="cid:...">, in order


@dataclass(slots=True)
class _Ctx:
    cid_url: Callable[[str], str] | None
    allow_remote: bool
    remote: bool = False
    cids: list[str] = field(default_factory=list)


_ctx: contextvars.ContextVar[_Ctx] = contextvars.ContextVar("mr_sanitize_ctx")


def _attribute_filter(tag: str, attr: str, value: str) -> str | None:
    ctx = _ctx.get()
    if attr == "style":
        return None if _BAD_STYLE.search(value) else value
    if attr == "href":
        return value if _SAFE_HREF.match(value.strip()) else None
    if attr == "target":
        return "_blank"
    if attr == "class":
        # Classes only mean something with <style> blocks, which are removed; keep the quote markers.
        keep = [
            c
            for c in value.split()
            if c.startswith(("gmail_", "moz-", "yahoo_quoted", "divRply")) or c in _QUOTE_CLASSES
        ]
        return " ".join(keep) or None
    if attr == "src":
        v = value.strip()
        if v.lower().startswith("cid:"):
            cid = unquote(v[4:]).strip("<>")
            ctx.cids.append(cid)
            if ctx.cid_url is None:
                return "cid:" + cid
            return ctx.cid_url(cid)
        if _REMOTE.match(v):
            ctx.remote = True
            if ctx.allow_remote:
                return v
            return _REMOTE_MARK + v
        return None
    if attr == "cite":
        return value if _SAFE_HREF.match(value.strip()) else None
    return value


_QUOTE_CLASSES = frozenset(
    {"gmail_quote", "gmail_attr", "moz-cite-prefix", "yahoo_quoted", "OutlookMessageHeader"}
)

_cleaner = nh3.Cleaner(
    tags=set(ALLOWED_TAGS),
    clean_content_tags=set(CLEAN_CONTENT_TAGS),
    attributes={k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
    attribute_filter=_attribute_filter,
    strip_comments=True,
    link_rel="noopener noreferrer",
    url_schemes=set(URL_SCHEMES),
    filter_style_properties=set(ALLOWED_STYLE_PROPERTIES),
)

_REMOTE_ATTR = re.compile(r' src="' + re.escape(_REMOTE_MARK))
# Conditional comments and processing instructions survive some parsers as text; drop them first.
_PRE_STRIP = re.compile(r"<!\[if[^>]*>|<!\[endif\]>|<\?xml[^>]*>", re.I)


MAX_DEPTH = 256  # elements open at once; browsers and mail clients render nothing useful deeper
MAX_HTML = 4_000_000  # characters of HTML sanitised (a larger body is shown as text)
_TAG_SCAN = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*)[^>]*?(/?)>")
_VOID = frozenset(["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr"])


def too_deep(html: str, limit: int = MAX_DEPTH) -> bool:
    """Whether more than ``limit`` elements are ever open at once (a nesting bomb makes the sanitiser's
    tree building quadratic: 20,000 nested divs took half a second, 200,000 minutes). Linear, and it
    stops at the first excess; unclosed elements count as open, as a parser would keep them."""
    depth = 0
    for m in _TAG_SCAN.finditer(html):
        if m.group(1):
            depth = max(0, depth - 1)
        elif not m.group(3) and m.group(2).lower() not in _VOID:
            depth += 1
            if depth > limit:
                return True
    return False


def unsafe_to_sanitise(html: str) -> str:
    """Why this HTML is shown as text instead of being sanitised, or ''."""
    if len(html) > MAX_HTML:
        return f"html_too_large: {len(html):,} characters, shown as text"
    if too_deep(html):
        return f"html_too_deep: more than {MAX_DEPTH} nested elements, shown as text"
    return ""


def sanitize_html(
    html: str,
    *,
    cid_url: Callable[[str], str] | None = None,
    allow_remote: bool = False,
) -> SafeHtml:
    """Sanitise an email's HTML for display inside the CRM (see the module docstring)."""
    if not html or unsafe_to_sanitise(html):
        return SafeHtml("", False, ())
    ctx = _Ctx(cid_url=cid_url, allow_remote=allow_remote)
    token = _ctx.set(ctx)
    try:
        out = _cleaner.clean(_PRE_STRIP.sub("", html))
    finally:
        _ctx.reset(token)
    if not allow_remote and ctx.remote:
        out = _REMOTE_ATTR.sub(' data-mr-remote-src="', out)
    return SafeHtml(out.strip(), ctx.remote, tuple(dict.fromkeys(ctx.cids)))


# --- HTML -> text -----------------------------------------------------------------------------------

_DROP = re.compile(r"<(head|style|script|title|template|noscript)\b[^>]*>.*?</\1\s*>", re.I | re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_BR = re.compile(r"<br\b[^>]*>", re.I)
_BLOCK_END = re.compile(
    r"</(?:p|div|tr|h[1-6]|li|blockquote|pre|table|ul|ol|dl|dt|dd|section|article|header|footer)\s*>", re.I
)
_BLOCK_START = re.compile(
    r"<(?:p|div|tr|h[1-6]|blockquote|pre|table|section|article|header|footer|hr)\b[^>]*>", re.I
)
_LI = re.compile(r"<li\b[^>]*>", re.I)
_LI_END = re.compile(r"</li\s*>", re.I)
_TD = re.compile(r"</t[dh]\s*>", re.I)
_TAG = re.compile(r"<[^>]*>", re.S)
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_BLANKS = re.compile(r"\n\s*\n\s*\n+")


def html_to_text(html: str) -> str:
    """Readable plain text of an HTML body (block elements become line breaks)."""
    if not html:
        return ""
    s = _COMMENT.sub("", html)
    s = _DROP.sub("", s)
    s = _BR.sub("\n", s)
    s = _LI_END.sub("", s)
    s = _LI.sub("\n- ", s)
    s = _TD.sub(" ", s)
    s = _BLOCK_END.sub("\n", s)
    s = _BLOCK_START.sub("\n", s)
    s = _TAG.sub("", s)
    s = htmllib.unescape(s)
    s = _SPACES.sub(" ", s)
    lines = [line.strip() for line in s.split("\n")]
    s = "\n".join(lines)
    s = _BLANKS.sub("\n\n", s)
    return s.strip("\n") + "\n" if s.strip() else ""
