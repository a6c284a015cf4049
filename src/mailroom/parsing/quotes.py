"""The new part of a reply, separated from the quoted history and the signature.

Plain text: every line is classified (quoted ``>``, quote header, signature marker, text, blank) and
a small state machine walks the lines top-down:

- text before any marker is the reply;
- a quote header ("On ... wrote:", "ср, 30 апр. 2025 г. в 15:19, Имя <a@b>:", "-----Original
  Message-----", "-----Исходное сообщение-----", an ``From:/От:`` block with ``Sent:/Отправлено:``,
  ``To:/Кому:``, ``Subject:/Тема:`` ...) hides what follows, and so does a signature marker ("--",
  "Sent from my iPhone", "Отправлено с iPhone", "Regards," ...);
- ``>`` lines are hidden; unquoted text that follows a quoted block is an inline answer and shown.

HTML: the quote containers of the common clients (Gmail ``gmail_quote``, Outlook ``divRplyFwdMsg`` /
border-top header block, Apple Mail and Thunderbird ``blockquote type=cite``, Yahoo, Yandex,
Mail.ru) are cut off first, then the text rules run on what is left.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailroom.parsing.html import html_to_text, sanitize_html

_WROTE = (
    r"wrote|writes|has written|пишет|написал\(?а?\)?|написала|писал\(?а?\)?|a\s+écrit|écrit|escribió|escribio|ha\s+scritto|scritto|"
    r"escreveu|schrieb|geschreven|schreef|skrev|kirjoitti|pisze|napisał\(?a?\)?|napisała|yazdı|napsal\(?a?\)?|írta|"
    r"έγραψε|写道|작성|のメッセージ|ha\s+escrit|kirjutas|rašė|rakstīja|написав\(?ла\)?|пише"
)
# "On <date>, <name> <addr> wrote:" and its translations (one line, possibly merged from two).
_HEADER_WROTE = re.compile(
    r"^\s*[-*]*\s*(?:On|Le|El|Il|Em|Am|Op|Den|Dne|W\s+dniu|Dnia|pe|ma|ti|ke|to|pe|la|su|\S+,?)\b.{0,300}?(?:"
    + _WROTE
    + r")\s*:?\s*[-*]*\s*$",
    re.I,
)
_HEADER_WROTE_LOOSE = re.compile(r"(?:^|\s)(?:" + _WROTE + r")(?:\s.{0,200})?:\s*$", re.I)
_WROTE_NO_COLON = re.compile(r"^\s*-*\s*On\s.{0,200}\d.{0,200}\swrote\s*:?\s*-*\s*$")
# "<date ...> <name> <addr>:" (Gmail ru/uk, Yandex, Mail.ru "... от Имя <a@b>:") - needs a digit and an address.
_HEADER_ADDR = re.compile(r"^\s*(?=.*\d).{0,250}[<\[(]?[^\s<>\[\]()]+@[^\s<>\[\]()]+[>\])]?\s*:\s*$")
_SEPARATOR = re.compile(
    r"^\s*[-_=*>]*\s*(?:Original\s+Message|Original\s+message|Forwarded\s+message|Исходное\s+сообщение|"
    r"Пересылаемое\s+сообщение|Пересланное\s+сообщение|Оригинальное\s+сообщение|Message\s+d'origine|Message\s+transféré|"
    r"Ursprüngliche\s+Nachricht|Weitergeleitete\s+Nachricht|Oprindelig\s+(?:besked|meddelelse)|Mensaje\s+original|"
    r"Messaggio\s+originale|Oorspronkelijk\s+bericht|Doorgestuurd\s+bericht|Alkuperäinen\s+viesti|Originalmeddelande|"
    r"Opprinnelig\s+melding|Mensagem\s+original|Wiadomość\s+oryginalna|Původní\s+zpráva|Eredeti\s+üzenet|"
    r"Begin\s+forwarded\s+message|Début\s+du\s+message\s+réexpédié|Reply\s+message|Original)\s*:?\s*[-_=*]*\s*$",
    re.I,
)
_FROM_LINE = re.compile(
    r"^\s*\*?\s*(?:From|От|Von|De|Da|Van|Fra|Från|Lähettäjä|Od|Kimden|Feladó|Від|Afzender|Remitente|Expéditeur)\s*:\s*\*?\s*(.*)$",
    re.I,
)
_HEADER_FIELD = re.compile(
    r"^\s*\*?\s*(?:Sent|Date|To|Cc|Subject|Отправлено|Дата|Кому|Копия|Тема|Gesendet|Datum|An|Betreff|Envoyé|À|Objet|"
    r"Enviado|Fecha|Para|Asunto|Inviato|Data|Oggetto|A|Verzonden|Aan|Onderwerp|Sendt|Til|Emne|Skickat|Ämne|"
    r"Lähetetty|Päivämäärä|Vastaanottaja|Aihe|Wysłano|Temat|Do|Odesláno|Komu|Předmět|Gönderildi|Tarih|Konu|"
    r"Надіслано|Тема)\s*:",
    re.I,
)
_EMAILISH = re.compile(r"[<\[(]\s*(?:mailto:)?[^\s<>\[\]]+@[^\s<>\[\]]+\s*[>\])]|\S+@\S+\.\w+")
_SIGNATURE = re.compile(
    r"^(?:\s*-{2,4}\s*|\s*_{2,4}|-- |\+{2,4}|={2,4}|_{32}|"
    r"Sent from (?:my )?.{1,100}|Sent with .{1,40}|Sent via .{1,40}|Get Outlook for .{1,40}|"
    r"Envoyé de mon .{1,40}|Envoyé depuis .{1,40}|Envoyé à partir de .{1,40}|Télécharger Outlook pour .{1,40}|"
    r"Von meinem .{1,40} gesendet|Gesendet von .{1,100}|Sendt fra .{1,40}|Enviado desde .{1,40}|"
    r"Enviado do meu .{1,40}|Inviato da .{1,40}|Verzonden (?:vanaf|met) .{1,40}|Verstuurd vanaf .{1,40}|Skickat från .{1,40}|"
    r"Lähetetty .{1,40}:sta|Отправлено (?:с|из|со) .{1,60}|Отправлено с моего .{1,40}|Надіслано з .{1,40}|"
    r"Cheers,?!?|Best wishes,?!?|(?:\w{1,20}\s)?(?:and\s)?Regards,?!?|Kind regards,?|Bien à vous,?!?|"
    r"(?:\w{1,20}\s)?cordialement,?!?|Bonne (?:journée|soirée)!?|"
    r"С уважением,?|С наилучшими пожеланиями,?|Всего доброго,?|Mit freundlichen Grüßen,?|Viele Grüße,?)\s*$",
    re.I,
)
_QUOTED = re.compile(r"^\s*>")
_DIGIT = re.compile(r"\d")
_MULTI_ON = re.compile(r"^\s*(?:On|Le|El|Il|Em|Am|Op|Den)\s.{5,}$")


@dataclass(frozen=True, slots=True)
class ReplySplit:
    reply: str  # the new text
    quoted: str  # quoted history (with its headers)
    signature: str  # the signature block(s) below the reply


_TEXT, _BLANK, _QUOTE, _HEADER, _SIG = range(5)


def _is_from_block(lines: list[str], i: int) -> bool:
    m = _FROM_LINE.match(lines[i])
    if m is None:
        return False
    rest = m.group(1)
    addr_near = _EMAILISH.search(rest) or (
        i + 1 < len(lines) and _EMAILISH.search(lines[i + 1]) and not lines[i + 1].strip().startswith(">")
    )
    if addr_near and len(rest) < 200:
        return True
    fields = 0
    for j in range(i + 1, min(i + 6, len(lines))):
        if _HEADER_FIELD.match(lines[j]):
            fields += 1
    return fields >= 2


def _header_text(s: str) -> bool:
    """A one-line quote header ("On ... wrote:", "<date> <name> <addr>:", "-----Original Message-----")."""
    if not s or len(s) > 400:
        return False
    if _SEPARATOR.match(s):
        return True
    if _WROTE_NO_COLON.match(s):
        return True
    if s.endswith(":"):
        if _HEADER_WROTE.match(s) and (_DIGIT.search(s) is not None or "@" in s or len(s) < 120):
            return True
        if _HEADER_WROTE_LOOSE.search(s) and ("@" in s or _DIGIT.search(s) is not None):
            return True
        if _HEADER_ADDR.match(s):
            return True
    return False


def _is_header(line: str, lines: list[str], i: int) -> bool:
    s = line.strip()
    if _header_text(s):
        return True
    # A From:/От: block counts only at the start of a paragraph (after a blank line).
    if i > 0 and lines[i - 1].strip():
        return False
    return _is_from_block(lines, i)


def _merge_wrapped_headers(lines: list[str]) -> list[str]:
    """Join a quote header wrapped over two or three lines ("On <date>, <name>\\n<addr> wrote:")."""
    out: list[str] = []
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        s = line.strip()
        if (
            s
            and len(s) < 300
            and not s.endswith(":")
            and not _QUOTED.match(line)
            and (_MULTI_ON.match(line) or _DIGIT.search(s) is not None)
        ):
            merged = False
            for k in (1, 2):
                if i + k >= n:
                    break
                nxt = lines[i + k].strip()
                if not nxt or (_QUOTED.match(lines[i + k]) and nxt not in (">:", "> :")) or len(nxt) > 200:
                    break
                if not nxt.endswith(":"):
                    continue
                joined = " ".join(x.strip() for x in lines[i : i + k + 1])
                if _header_text(joined):
                    out.append(joined)
                    i += k + 1
                    merged = True
                    break
            if merged:
                continue
        out.append(line)
        i += 1
    return out


def split_reply(text: str) -> ReplySplit:
    """Split a plain-text reply into (new text, quoted history, signature)."""
    if not text:
        return ReplySplit("", "", "")
    lines = _merge_wrapped_headers(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    kinds: list[int] = []
    for i, line in enumerate(lines):
        if not line.strip():
            kinds.append(_BLANK)
        elif _QUOTED.match(line):
            kinds.append(_QUOTE)
        elif _SIGNATURE.match(line.rstrip()) and i > 0:
            kinds.append(_SIG)
        elif _is_header(line, lines, i):
            kinds.append(_HEADER)
        else:
            kinds.append(_TEXT)
    reply: list[str] = []
    quoted: list[str] = []
    sig: list[str] = []
    mode = _TEXT
    for line, kind in zip(lines, kinds, strict=True):
        if kind == _QUOTE:
            mode = _QUOTE
            quoted.append(line)
        elif kind == _HEADER:
            mode = _HEADER
            quoted.append(line)
        elif kind == _SIG:
            mode = _SIG
            sig.append(line)
        elif mode == _TEXT or (mode == _QUOTE and kind == _TEXT):
            mode = _TEXT
            reply.append(line)
        elif mode == _SIG:
            sig.append(line)
        elif mode == _QUOTE and kind == _BLANK:
            quoted.append(line)
        else:
            quoted.append(line)
    # Blank lines that separated the reply from the history belong to neither.
    while reply and not reply[-1].strip():
        reply.pop()
    while reply and not reply[0].strip():
        reply.pop(0)
    out = "\n".join(line.rstrip() for line in reply)
    return ReplySplit(out + "\n" if out else "", "\n".join(quoted).strip("\n"), "\n".join(sig).strip("\n"))


# --- HTML --------------------------------------------------------------------------------------------

_HTML_MARKERS = re.compile(
    r"""<(?:div|blockquote)\b[^>]*\bclass\s*=\s*["']?[^"'>]*\b(?:gmail_quote|gmail_extra|yahoo_quoted|moz-cite-prefix|"""
    r"""mail-quote-collapse|protonmail_quote|zmail_extra|OutlookMessageHeader|x_gmail_quote)\b"""
    r"""|<(?:div|span)\b[^>]*\bid\s*=\s*["']?(?:divRplyFwdMsg|x_divRplyFwdMsg|appendonsend|yahoo_quoted[^"'>\s]*|"""
    r"""mail-app-auto-quote|replySplit|OLK_SRC_BODY_SECTION|isForwardContent|isReplyContent)\b"""
    r"""|<blockquote\b[^>]*\btype\s*=\s*["']?cite"""
    r"""|<blockquote\b[^>]*\bstyle\s*=\s*["'][^"']*border-left"""
    r"""|<div\b[^>]*style\s*=\s*["'][^"']*border-top\s*:\s*solid\s+#(?:E1E1E1|B5C4DF)"""
    r"""|<hr\b[^>]*\bid\s*=\s*["']?(?:stopSpelling|replySplit)"""
    r"""|<hr\b[^>]*style\s*=\s*["'][^"']*display\s*:\s*inline-block\s*;\s*width\s*:\s*98%""",
    re.I,
)


def cut_html_quote(html: str) -> tuple[str, bool]:
    """The HTML before the first quote container of a known client; (head, cut_made)."""
    m = _HTML_MARKERS.search(html)
    if m is None:
        return html, False
    return html[: m.start()], True


@dataclass(frozen=True, slots=True)
class HtmlReplySplit:
    reply_html: str  # sanitised HTML of the new part
    reply_text: str


def split_reply_html(html: str) -> HtmlReplySplit:
    """The new part of an HTML reply, as sanitised HTML and as text."""
    head, _cut = cut_html_quote(html)
    text = split_reply(html_to_text(head)).reply
    return HtmlReplySplit(sanitize_html(head).html, text)


def visible_text(text: str) -> str:
    """Alias kept for readability in tests/measurements."""
    return split_reply(text).reply
