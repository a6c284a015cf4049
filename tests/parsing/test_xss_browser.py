"""Acceptance: the sanitised XSS corpus (DOMPurify's vectors) runs no script and loads nothing in a
real browser (headless Debian Chromium driven by Playwright).

Every DOMPurify case is sanitised with ``sanitize_html`` and loaded twice:

* directly into a page (then every case's markup is re-serialised and re-parsed through
  ``innerHTML``, the mutation-XSS round trip a web UI may do), and
* inside ``<iframe sandbox>`` (no ``allow-scripts``) under the CSP Mailroom will use.

Execution is detected independently of the payloads: DevTools ``Debugger.scriptParsed`` reports every
script the page compiles (inline ``<script>``, event handlers, ``javascript:`` URLs), compared with a
baseline run of the same harness on an empty page; plus dialogs, canaries (``window.__xss``,
``window.__canary``) and hooks on ``alert``/``eval``/``fetch``/... that set ``window.__xss``.
The network is never reached: the browser only talks to a route handler. The page itself is served by
that handler at ``http://127.0.0.1:9`` (the discard port; nothing listens there and nothing is sent);
every other request is recorded and aborted. Positive controls prove each detector fires on raw input.
"""

from __future__ import annotations

import html as htmllib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailroom.parsing.html import sanitize_html

from .helpers import CORPORA

pytestmark = pytest.mark.browser

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("MAILROOM_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Defence in depth: even a request that escaped the route handler could not resolve a name.
    "--host-resolver-rules=MAP * ~NOTFOUND",
]
ORIGIN = "http://127.0.0.1:9"
CSP = "default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'"
SETTLE_MS = 300  # onerror/onload/animation/focus handlers fire within this

# Payload-independent hooks: anything calling these marks the page.
INIT_SCRIPT = """
(() => {
  const mark = (n) => { try { if (!window.__xss) window.__xss = 'hook:' + n; } catch (e) {} };
  for (const n of ['alert', 'confirm', 'prompt', 'print', 'open']) {
    const orig = window[n];
    window[n] = function (...a) { mark(n); return orig.apply(this, a); };
  }
  // (eval/Function are not hooked: Playwright's own evaluate uses them; code they compile shows up
  // in Debugger.scriptParsed anyway.)
  const origFetch = window.fetch;
  window.fetch = function (...a) { mark('fetch'); return origFetch.apply(this, a); };
  const origOpen = XMLHttpRequest.prototype.open;
  XMLHttpRequest.prototype.open = function (...a) { mark('xhr'); return origOpen.apply(this, a); };
  const origBeacon = navigator.sendBeacon && navigator.sendBeacon.bind(navigator);
  if (origBeacon) navigator.sendBeacon = function (...a) { mark('beacon'); return origBeacon(...a); };
  const origWrite = document.write.bind(document);
  document.write = function (...a) { mark('document.write'); return origWrite(...a); };
})();
"""

REPARSE = (
    "() => { for (const e of document.querySelectorAll('.mr-case')) e.innerHTML = e.innerHTML; return 1; }"
)
CANARIES = "() => [window.__xss === undefined ? null : String(window.__xss), window.__canary === undefined ? null : String(window.__canary)]"

CONTROL_SCRIPT = "<script>window.__canary=1</script><p>control</p>"
CONTROL_ONERROR = '<img src=x onerror="window.__xss=1">'


def _cases() -> list[tuple[str, str]]:
    data = json.loads((CORPORA / "dompurify" / "expect.json").read_text(encoding="utf-8"))
    cases = [(f"dompurify#{c['id']}", c["payload"]) for c in data]
    cases += [("control:script", CONTROL_SCRIPT), ("control:onerror", CONTROL_ONERROR)]
    return cases


def _direct_page(bodies: list[tuple[str, str]]) -> str:
    parts = [f'<div class="mr-case" data-case="{htmllib.escape(name)}">{body}</div>' for name, body in bodies]
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>t</title></head><body>"
        + "".join(parts)
        + "</body></html>"
    )


def _sandboxed_page(bodies: list[tuple[str, str]]) -> str:
    inner = (
        f'<!doctype html><html><head><meta charset=utf-8><meta http-equiv="Content-Security-Policy" content="{CSP}">'
        "</head><body>" + "".join(f'<div class="mr-case">{b}</div>' for _, b in bodies) + "</body></html>"
    )
    return (
        "<!doctype html><html><head><meta charset=utf-8></head><body>"
        f'<iframe id="mail" sandbox="" srcdoc="{htmllib.escape(inner, quote=True)}"></iframe></body></html>'
    )


@dataclass
class Observation:
    dialogs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    scripts: list[tuple[str, str, int]] = field(default_factory=list)  # (world, url, length)
    canaries: list[str | None] = field(default_factory=list)
    frame_canaries: list[str | None] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return (
            not self.dialogs
            and not self.requests
            and not self.scripts
            and not any(self.canaries)
            and not any(self.frame_canaries)
        )


class Harness:
    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.baseline: set[str] = set()
        self.blocked_total = 0
        self.baseline = self._hashes(_direct_page([]), reparse=True) | self._hashes(_sandboxed_page([]))

    def _hashes(self, page_html: str, reparse: bool = False) -> set[str]:
        seen: set[str] = set()
        self._run(page_html, reparse=reparse, script_hashes=seen)
        return seen

    def load(self, page_html: str, *, reparse: bool = False) -> Observation:
        return self._run(page_html, reparse=reparse, script_hashes=None)

    def _run(self, page_html: str, *, reparse: bool, script_hashes: set[str] | None) -> Observation:
        obs = Observation()
        ctx = self.browser.new_context(service_workers="block", java_script_enabled=True)
        try:
            ctx.add_init_script(INIT_SCRIPT)

            def route(r: Any) -> None:
                if r.request.url == ORIGIN + "/page" and r.request.resource_type == "document":
                    r.fulfill(status=200, content_type="text/html; charset=utf-8", body=page_html)
                    return
                obs.requests.append(r.request.url)
                r.abort()

            ctx.route("**/*", route)
            page = ctx.new_page()
            if hasattr(page, "route_web_socket"):

                def websocket(ws: Any) -> None:
                    obs.requests.append(ws.url)
                    ws.close()

                page.route_web_socket("**/*", websocket)
            cdp = ctx.new_cdp_session(page)

            def parsed(e: dict[str, Any]) -> None:
                aux = e.get("executionContextAuxData") or {}
                if script_hashes is not None:
                    script_hashes.add(e.get("hash", ""))
                elif e.get("hash", "") not in self.baseline:
                    obs.scripts.append(
                        (str(aux.get("type", "")), str(e.get("url", "")), int(e.get("length", 0)))
                    )

            cdp.on("Debugger.scriptParsed", parsed)
            cdp.send("Debugger.enable")

            def dialog(d: Any) -> None:
                obs.dialogs.append(f"{d.type}: {d.message}")
                d.dismiss()

            page.on("dialog", dialog)
            page.goto(ORIGIN + "/page", wait_until="load")
            page.wait_for_timeout(SETTLE_MS)
            if reparse:
                page.evaluate(REPARSE)
                page.wait_for_timeout(SETTLE_MS)
            obs.canaries = page.evaluate(CANARIES)
            for fr in page.frames[1:]:
                obs.frame_canaries += fr.evaluate(CANARIES)
        finally:
            ctx.close()
        self.blocked_total += len(obs.requests)
        return obs


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (scripts/install-servers installs Debian's chromium)")
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True, timeout=30_000)
        except Exception as e:  # report exactly why the browser cannot run here
            pytest.skip(f"cannot launch {CHROMIUM}: {e}")
        try:
            yield Harness(browser)
        finally:
            browser.close()


def _culprits(harness: Harness, bodies: list[tuple[str, str]], page: Any, **kw: Any) -> list[str]:
    """Which cases of a failing batch misbehave on their own (for the assertion message)."""
    out = []
    for name, body in bodies:
        o = harness.load(page([(name, body)]), **kw)
        if not o.clean:
            out.append(f"{name}: {o}")
    return out


def test_positive_controls_detect_raw_payloads(harness: Harness) -> None:
    """Unsanitised input does run / load: the detectors work."""
    o = harness.load(_direct_page([("raw", CONTROL_ONERROR)]))
    assert o.canaries[0] == "1", o
    assert o.requests == [ORIGIN + "/x"], o  # the broken image was requested (and aborted)
    assert o.scripts, o  # the onerror handler was compiled
    o = harness.load(_direct_page([("raw", CONTROL_SCRIPT)]))
    assert o.canaries[1] == "1", o
    o = harness.load(_direct_page([("raw", '<iframe src="javascript:parent.__xss=2"></iframe>')]))
    assert o.canaries[0] == "2", o
    o = harness.load(_direct_page([("raw", "<img src=x onerror=alert(7)>")]))
    assert o.dialogs == ["alert: 7"], o
    assert o.canaries[0] == "hook:alert", o
    # The sandbox + CSP alone stop a raw remote image and a raw script (defence in depth).
    o = harness.load(_sandboxed_page([("raw", '<img src="http://127.0.0.1:9/t.png">' + CONTROL_ONERROR)]))
    assert o.requests == [] and not o.dialogs and not o.scripts, o


def test_sanitised_dompurify_corpus_runs_nothing_and_loads_nothing(harness: Harness) -> None:
    cases = _cases()
    bodies = [(name, sanitize_html(payload).html) for name, payload in cases]
    assert len(bodies) >= 200
    # Sanitising drops the control script (the canary would be set if it ran).
    assert "<script" not in dict(bodies)["control:script"]

    direct = harness.load(_direct_page(bodies), reparse=True)
    if not direct.clean:
        pytest.fail(
            "direct load: "
            + "\n".join(_culprits(harness, bodies, _direct_page, reparse=True))
            + f"\n{direct}"
        )
    assert direct.canaries == [None, None]

    sandboxed = harness.load(_sandboxed_page(bodies))
    if not sandboxed.clean:
        pytest.fail(
            "sandboxed load: " + "\n".join(_culprits(harness, bodies, _sandboxed_page)) + f"\n{sandboxed}"
        )
    print(
        f"\n[xss-browser] {len(bodies)} cases (incl. 2 controls) x 2 loads: "
        f"dialogs={len(direct.dialogs) + len(sandboxed.dialogs)}, "
        f"requests attempted={len(direct.requests) + len(sandboxed.requests)}, "
        f"page scripts compiled={len(direct.scripts) + len(sandboxed.scripts)}"
    )


def test_sanitised_payloads_with_remote_content_allowed_still_run_nothing(harness: Harness) -> None:
    """With "show images" on, remote images may load (blocked here), but still no script runs."""
    bodies = [(name, sanitize_html(payload, allow_remote=True).html) for name, payload in _cases()]
    o = harness.load(_direct_page(bodies), reparse=True)
    assert not o.dialogs and not o.scripts and not any(o.canaries), o
    # Whatever was requested was an image/CSS fetch over http(s) to a named host, never a script.
    assert all(u.startswith(("http://", "https://")) for u in o.requests), o.requests
