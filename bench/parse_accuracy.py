"""Accuracy figures of mailroom.parsing over the test corpora (tests/corpora).

    .venv/bin/python bench/parse_accuracy.py [--verbose]

Prints: bounce detection and hard/soft agreement (sisimai expected.json), ARF complaint detection,
auto-reply precision (reply-parser fixtures, imap-tools, non-bounce corpora) and recall (sisimai
RFC 3834 + php-bounce-handler auto-responders), reply-text equality (email-reply-parser
expected.json, whitespace-normalised), and charset correctness (thunderbird-charsets, rspamd-cyrillic,
james-mime4j Russian, imap-tools subjects/text).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mailroom.parsing.mime import parse_message  # noqa: E402
from mailroom.parsing.quotes import split_reply  # noqa: E402

CORPORA = ROOT / "tests" / "corpora"


def norm(s: str) -> str:
    return " ".join(s.replace("\u202f", " ").replace("\u00a0", " ").split())


@dataclass
class Rate:
    name: str
    ok: int = 0
    total: int = 0
    misses: list[str] = field(default_factory=list)

    def add(self, good: bool, label: str) -> None:
        self.total += 1
        if good:
            self.ok += 1
        else:
            self.misses.append(label)

    @property
    def rate(self) -> float:
        return self.ok / self.total if self.total else 1.0

    def line(self) -> str:
        return f"{self.name:<48} {self.ok:>4}/{self.total:<4} {self.rate * 100:6.1f}%"


def sisimai() -> tuple[Rate, Rate, Rate, Rate]:
    base = CORPORA / "sisimai-set-of-emails"
    data = json.loads((base / "expected.json").read_text())
    detect = Rate("bounce detection (sisimai, is_bounce)")
    hard = Rate("bounce hard/soft per recipient (sisimai)")
    arf = Rate("ARF complaint detection (sisimai)")
    vac = Rate("auto-reply recall (sisimai rfc3834)")
    for e in data["expected"]:
        raw = (base / e["file"]).read_bytes()
        p = parse_message(raw)
        reasons = {r["reason"] for r in e["results"]}
        if reasons == {"feedback"}:
            arf.add(p.bounce.is_complaint and not p.bounce.is_bounce, e["file"])
            continue
        if reasons == {"vacation"}:
            detect.add(not p.bounce.is_bounce, e["file"])
            vac.add(p.is_auto_reply, e["file"])
            continue
        if reasons == {"delivered"}:
            detect.add(not p.bounce.is_bounce, e["file"])
            continue
        detect.add(p.bounce.is_bounce, e["file"])
        got = [r for r in p.bounce.recipients if r.action != "delivered"]
        for i, r in enumerate(e["results"]):
            mine = got[i] if i < len(got) else (got[0] if got else None)
            ok = mine is not None and mine.hard == r["hard_bounce"]
            hard.add(
                ok,
                f"{e['file']}#{i + 1} exp={r['reason']}/{r['hard_bounce']} got={mine.reason if mine else None}/{mine.hard if mine else None}",
            )
    for f in data["not_bounces"]:
        p = parse_message((base / f).read_bytes())
        detect.add(not p.bounce.is_bounce, f)
    # rfc3834 files not in the tables
    for f in sorted((base / "maildir" / "bsd").glob("rfc3834-*.eml")):
        rel = f"maildir/bsd/{f.name}"
        if any(e["file"] == rel for e in data["expected"]):
            continue
        p = parse_message(f.read_bytes())
        vac.add(p.is_auto_reply, rel)
    return detect, hard, arf, vac


def reply_text() -> Rate:
    base = CORPORA / "email-reply-parser-fixtures"
    data = json.loads((base / "expected.json").read_text())
    rate = Rate("reply text == email-reply-parser visible text")
    for e in data:
        text = (base / e["file"]).read_text(encoding="utf-8")
        rate.add(norm(split_reply(text).reply) == norm(e["visible_text"]), e["file"])
    return rate


def _wrap(body: str, subject: str = "Re: your question") -> bytes:
    return (
        f"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
        "Message-ID: <x@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode() + body.encode("utf-8")


def auto_reply_precision() -> Rate:
    rate = Rate("auto-reply precision (human mail not automatic)")
    base = CORPORA / "email-reply-parser-fixtures"
    for e in json.loads((base / "expected.json").read_text()):
        p = parse_message(_wrap((base / e["file"]).read_text(encoding="utf-8")))
        rate.add(not p.is_auto_reply, e["file"])
    for f in sorted((CORPORA / "imap-tools" / "messages").rglob("*.eml")):
        p = parse_message(f.read_bytes())
        if p.bounce.is_bounce or p.bounce.is_complaint:
            continue
        rate.add(not p.is_auto_reply, str(f.relative_to(CORPORA)))
    return rate


def php_autoresponders() -> tuple[Rate, Rate]:
    """php-bounce-handler: files whose text says they are auto-responses vs bounces (no labels upstream)."""
    base = CORPORA / "php-bounce-handler"
    bounce_not_auto = Rate("php-bounce-handler bounces not auto-reply")
    seen = Rate("php-bounce-handler messages classified")
    for f in sorted(base.glob("*")):
        if f.suffix not in (".eml", ".txt"):
            continue
        p = parse_message(f.read_bytes())
        seen.add(p.bounce.is_bounce or p.bounce.is_complaint or p.is_auto_reply, f.name)
        if p.bounce.is_bounce:
            bounce_not_auto.add(not p.is_auto_reply, f.name)
    return bounce_not_auto, seen


# imap-tools' expectations are imap_tools' own (legacy email.header) output; two of them are not what
# the message says. Reviewed by hand; each correction says why.
IMAP_TOOLS_CORRECTIONS = {
    # imap_tools dropped the raw 8-bit bytes 0xE7/0xE3 it could not decode (its raw header keeps them
    # as \udce7 \udce3). The message's From: is =?Windows-1252?...?=, where they are "ç" and "ã"
    # (Portuguese "Formação", "Verão").
    "messages/error_emails/invalid_subject_characters.eml": (
        "Formação FrenetikPolis: Mega Campanha Final Verão | Cursos de Setembro"
    ),
    # "Re: TEST<fold>=?ISO-2022-JP?B?...?=": RFC 2047 section 6.2 ignores only the white space between
    # two adjacent encoded words; "TEST" is plain text, so the space stays (email.policy.default
    # agrees: "Re: TEST \tテストテスト"; the legacy email.header.decode_header drops it).
    "messages/rfc2822/example14.eml": "Re: TEST テストテスト",
}


def charsets() -> Rate:
    rate = Rate("charset correctness (Cyrillic refs + imap-tools)")
    tb = CORPORA / "thunderbird-charsets"
    for e in json.loads((tb / "expected.json").read_text()):
        p = parse_message((tb / e["file"]).read_bytes())
        if "subject" in e:
            rate.add(p.subject == e["subject"], f"{e['file']} subject {p.subject!r}")
            rate.add(p.text == e["body_text"], f"{e['file']} body {p.text!r}")
        else:
            rate.add(e["text_plain_contains"] in p.text, f"{e['file']} text")
            rate.add(e["text_html_contains"] in p.html, f"{e['file']} html")
    rs = CORPORA / "rspamd-cyrillic"
    for m in json.loads((rs / "decoded-reference.json").read_text())["messages"]:
        p = parse_message((rs / m["file"]).read_bytes())
        if m.get("subject"):
            rate.add(p.subject == m["subject"], f"{m['file']} subject {p.subject!r}")
        names = sorted(x["filename"] for x in m["parts"] if x.get("filename"))
        got = sorted(a.filename for a in p.attachments if a.filename)
        if names:
            rate.add(got == names, f"{m['file']} filenames {got} != {names}")
        heads = [
            x["text_head"]
            for x in m["parts"]
            if x.get("text_head") and x["content_type"] == "text/plain" and not x.get("filename")
        ]
        if heads and heads[0].strip():
            rate.add(norm(heads[0])[:60] in norm(p.text), f"{m['file']} text")
    it = CORPORA / "imap-tools"
    for e in json.loads((it / "expected.json").read_text()):
        if "\\udc" in json.dumps(e["subject"]) or any("\udc80" <= c <= "\udcff" for c in e["subject"]):
            continue
        p = parse_message((it / e["file"]).read_bytes())
        want = IMAP_TOOLS_CORRECTIONS.get(e["file"], e["subject"])
        rate.add(norm(p.subject) == norm(want), f"{e['file']} subject {p.subject!r} != {want!r}")
    return rate


def main() -> None:
    verbose = "--verbose" in sys.argv or "-v" in sys.argv
    detect, hard, arf, vac = sisimai()
    bna, _seen = php_autoresponders()
    rates = [detect, hard, arf, vac, auto_reply_precision(), bna, reply_text(), charsets()]
    for r in rates:
        print(r.line())
        if verbose:
            for m in r.misses:
                print("    miss:", m)


if __name__ == "__main__":
    main()
