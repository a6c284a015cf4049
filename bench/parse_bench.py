"""Parsing throughput: mailroom's full pipeline vs a bare stdlib parse of the same bytes.

    .venv/bin/python bench/parse_bench.py [--messages N] [--rounds R] [--seed S]

Generates a deterministic mixed corpus (plain text, HTML, multipart/alternative, multipart/mixed with
attachments, Cyrillic charsets in headers and bodies, quoted replies, a few 1-2 MB messages) and
prints, in one run:

- full pipeline: ``mailroom.parsing.mime.parse_message`` (MIME tree, header decoding, charsets, body
  decoding, HTML sanitising, reply split, auto-reply/bulk/bounce classification);
- bare stdlib: ``email.message_from_bytes(b, policy=email.policy.default)`` (structure only);
- the ratio (full / bare, in messages per second: > 1.0 means the full pipeline is faster), and the
  peak RSS of the process.
"""

from __future__ import annotations

import argparse
import base64
import email
import email.policy
import gc
import random
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mailroom.parsing.mime import parse_message  # noqa: E402

WORDS_EN = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "deal",
    "contract",
    "invoice",
    "meeting",
    "tomorrow",
    "price",
    "offer",
    "team",
    "please",
]
WORDS_RU = [
    "привет",
    "договор",
    "счёт",
    "встреча",
    "завтра",
    "цена",
    "предложение",
    "команда",
    "пожалуйста",
    "спасибо",
    "сделка",
    "оплата",
]


def _sentence(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(rng.choice(words) for _ in range(n)).capitalize() + "."


def _paragraphs(rng: random.Random, words: list[str], count: int) -> str:
    return "\n\n".join(
        " ".join(_sentence(rng, words, rng.randint(6, 14)) for _ in range(rng.randint(2, 5)))
        for _ in range(count)
    )


def _ew(text: str, charset: str) -> str:
    data = text.encode(charset)
    return f"=?{charset}?B?{base64.b64encode(data).decode()}?="


def _headers(rng: random.Random, i: int, subject: str, ctype: str, extra: str = "") -> str:
    return (
        f"Return-Path: <sender{i}@example.com>\r\n"
        f"Received: from mx.example.com (mx.example.com [192.0.2.{i % 250}]) by mail.example.org; Mon, 3 Jun 2024 10:{i % 60:02d}:00 +0300\r\n"
        f"Message-ID: <msg{i}.{rng.randint(0, 10**9)}@example.com>\r\n"
        f"Date: Mon, 3 Jun 2024 10:{i % 60:02d}:00 +0300\r\n"
        f"From: {_ew('Иван Петров', 'utf-8') if i % 3 == 0 else 'John Smith'} <sender{i}@example.com>\r\n"
        f"To: Manager <manager@example.org>, other{i}@example.net\r\n"
        f"Cc: team@example.org\r\n"
        f"Subject: {subject}\r\n"
        f"MIME-Version: 1.0\r\n"
        f"{extra}"
        f"Content-Type: {ctype}\r\n"
    )


def _b64(data: bytes) -> str:
    enc = base64.b64encode(data).decode()
    return "\r\n".join(enc[i : i + 76] for i in range(0, len(enc), 76))


def make_plain(rng: random.Random, i: int) -> bytes:
    body = _paragraphs(rng, WORDS_EN, rng.randint(1, 6))
    return (
        _headers(rng, i, "Question about the offer", "text/plain; charset=utf-8")
        + "\r\n"
        + body.replace("\n", "\r\n")
        + "\r\n"
    ).encode()


def make_reply(rng: random.Random, i: int) -> bytes:
    new = _paragraphs(rng, WORDS_RU, 1)
    quoted = "\n".join("> " + line for line in _paragraphs(rng, WORDS_RU, 3).split("\n"))
    body = f"{new}\n\n-- \nИван\n\nпн, 3 июн. 2024 г. в 09:15, Manager <manager@example.org>:\n{quoted}\n"
    extra = (
        f"In-Reply-To: <prev{i}@example.org>\r\nReferences: <root{i}@example.org> <prev{i}@example.org>\r\n"
    )
    subj = _ew("Re: Договор и счёт на оплату", "utf-8")
    return (
        _headers(rng, i, subj, "text/plain; charset=utf-8", extra) + "Content-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode() + body.replace("\n", "\r\n").encode("utf-8")


def make_cp1251(rng: random.Random, i: int) -> bytes:
    body = _paragraphs(rng, WORDS_RU, rng.randint(1, 4))
    subj = _ew("Коммерческое предложение", "windows-1251")
    head = (
        _headers(rng, i, subj, "text/plain; charset=windows-1251") + "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return head.encode() + body.replace("\n", "\r\n").encode("cp1251")


def make_koi8(rng: random.Random, i: int) -> bytes:
    body = _paragraphs(rng, WORDS_RU, 2)
    qp = "".join(
        c if ord(c) < 128 and c not in "=\r\n" else "".join(f"={b:02X}" for b in c.encode("koi8-r"))
        for c in body
    )
    lines = [qp[j : j + 72] for j in range(0, len(qp), 72)]
    subj = _ew("Счёт", "koi8-r")
    head = (
        _headers(rng, i, subj, 'text/plain; charset="koi8-r"')
        + "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    return (head + "=\r\n".join(lines) + "\r\n").encode()


def _html(rng: random.Random, words: list[str], paragraphs: int) -> str:
    rows = "".join(
        f"<tr><td style='padding:4px;color:#333'>{_sentence(rng, words, 5)}</td><td>{rng.randint(1, 999)}</td></tr>"
        for _ in range(5)
    )
    ps = "".join(
        f"<p style='font-family:Arial;margin:0 0 8px'>{_sentence(rng, words, 12)}</p>"
        for _ in range(paragraphs)
    )
    return (
        "<html><head><meta charset='utf-8'><style>p{margin:0}</style></head><body>"
        f"<div>{ps}</div><table border='0' cellpadding='0'>{rows}</table>"
        "<img src='https://tracker.example.com/open.gif' width='1' height='1'>"
        "<div class='gmail_quote'><blockquote>older text</blockquote></div></body></html>"
    )


def make_alternative(rng: random.Random, i: int) -> bytes:
    b = f"alt{i}"
    text = _paragraphs(rng, WORDS_EN, 2)
    html = _html(rng, WORDS_EN, rng.randint(2, 8))
    body = (
        f"--{b}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
        f"--{b}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{_b64(html.encode())}\r\n"
        f"--{b}--\r\n"
    )
    return (
        _headers(
            rng,
            i,
            "Newsletter: June",
            f'multipart/alternative; boundary="{b}"',
            "List-Id: <news.example.com>\r\n",
        )
        + "\r\n"
        + body
    ).encode()


def make_mixed(rng: random.Random, i: int, attach_kb: int) -> bytes:
    b1, b2 = f"mix{i}", f"rel{i}"
    html = _html(rng, WORDS_RU, 3).replace("</body>", "<img src='cid:logo@example'></body>")
    att = rng.randbytes(attach_kb * 1024)
    name = "Договор №15.pdf"
    body = (
        f'--{b1}\r\nContent-Type: multipart/related; boundary="{b2}"\r\n\r\n'
        f"--{b2}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{_b64(html.encode())}\r\n"
        f"--{b2}\r\nContent-Type: image/png\r\nContent-ID: <logo@example>\r\nContent-Transfer-Encoding: base64\r\n\r\n{_b64(rng.randbytes(3000))}\r\n"
        f"--{b2}--\r\n"
        f'--{b1}\r\nContent-Type: application/pdf; name="{_ew(name, "utf-8")}"\r\n'
        f"Content-Disposition: attachment; filename*=utf-8''%D0%94%D0%BE%D0%B3%D0%BE%D0%B2%D0%BE%D1%80%20%E2%84%9615.pdf\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{_b64(att)}\r\n"
        f"--{b1}--\r\n"
    )
    subj = _ew("Договор на подпись", "utf-8")
    return (_headers(rng, i, subj, f'multipart/mixed; boundary="{b1}"') + "\r\n" + body).encode()


def make_corpus(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = []
    for i in range(n):
        k = i % 10
        if k in (0, 1):
            out.append(make_plain(rng, i))
        elif k in (2, 3):
            out.append(make_reply(rng, i))
        elif k == 4:
            out.append(make_cp1251(rng, i))
        elif k == 5:
            out.append(make_koi8(rng, i))
        elif k in (6, 7):
            out.append(make_alternative(rng, i))
        else:
            out.append(make_mixed(rng, i, rng.choice((5, 20, 80))))
    for j in range(max(1, n // 100)):
        out.append(make_mixed(rng, n + j, rng.choice((1024, 1500, 2000))))
    return out


def timed(fn: object, corpus: list[bytes]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    for raw in corpus:
        fn(raw)  # type: ignore[operator]
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    corpus = make_corpus(args.messages, args.seed)
    total = sum(len(b) for b in corpus)
    big = sum(1 for b in corpus if len(b) > 1_000_000)
    print(f"corpus: {len(corpus)} messages, {total / 1e6:.1f} MB ({big} over 1 MB), seed {args.seed}")

    def full(raw: bytes) -> None:
        parse_message(raw)

    def bare(raw: bytes) -> None:
        email.message_from_bytes(raw, policy=email.policy.default)

    timed(full, corpus[:50])  # warm-up (regex compilation, imports)
    # Interleaved rounds, best of each: a busy machine slows both sides alike.
    t_bare = t_full = float("inf")
    for _ in range(args.rounds):
        t_bare = min(t_bare, timed(bare, corpus))
        t_full = min(t_full, timed(full, corpus))
    n = len(corpus)
    print(
        f"{'bare stdlib message_from_bytes(policy=default)':<52} {n / t_bare:9.0f} msg/s {total / t_bare / 1e6:8.1f} MB/s"
    )
    print(
        f"{'mailroom full pipeline (parse_message)':<52} {n / t_full:9.0f} msg/s {total / t_full / 1e6:8.1f} MB/s"
    )
    print(f"ratio full/bare (msg/s): {t_bare / t_full:.2f}x")
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS: {peak_kb / 1024:.0f} MB")


if __name__ == "__main__":
    main()
