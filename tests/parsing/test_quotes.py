from __future__ import annotations

import json

from mailroom.parsing.quotes import cut_html_quote, split_reply, split_reply_html

from .helpers import CORPORA, norm, report


def test_reply_parser_fixtures_visible_text_rate() -> None:
    base = CORPORA / "email-reply-parser-fixtures"
    cases = json.loads((base / "expected.json").read_text())
    ok = sum(
        norm(split_reply((base / c["file"]).read_text(encoding="utf-8")).reply) == norm(c["visible_text"])
        for c in cases
    )
    assert report("reply text == email-reply-parser visible text", ok, len(cases)) >= 0.90


def test_russian_fixture() -> None:
    text = (CORPORA / "email-reply-parser-fixtures" / "crisp-oss" / "email_russian.txt").read_text(
        encoding="utf-8"
    )
    r = split_reply(text)
    assert r.reply.endswith("nec nibh.\n")
    assert "привет" in r.quoted


def test_outlook_russian_block() -> None:
    text = (
        "Добрый день!\n\nДоговор подписан, высылаю скан.\n\nС уважением,\nИван Петров\nООО «Ромашка»\n\n"
        "-----Исходное сообщение-----\nОт: Менеджер <manager@example.com>\nОтправлено: 3 июня 2024 г. 10:00\n"
        "Кому: Иван <ivan@example.ru>\nТема: Договор\n\nПрошу подписать договор.\n"
    )
    r = split_reply(text)
    assert r.reply == "Добрый день!\n\nДоговор подписан, высылаю скан.\n"
    assert r.signature == "С уважением,\nИван Петров\nООО «Ромашка»"
    assert r.quoted.startswith("-----Исходное сообщение-----")


def test_outlook_russian_headers_without_separator() -> None:
    text = "Спасибо, получили.\n\nОт: Менеджер [mailto:manager@example.com]\nОтправлено: 3 июня 2024 г. 10:00\nКому: Иван\nТема: Счёт\n\nСчёт во вложении."
    assert split_reply(text).reply == "Спасибо, получили.\n"


def test_pishet_headers() -> None:
    for header in (
        "3 июня 2024 г., в 10:00, Менеджер <manager@example.com> пишет:",
        "Понедельник, 3 июня 2024, 10:00 +03:00 от Менеджер <manager@example.com>:",
        '03.06.2024, 10:00, "Менеджер" <manager@example.com>:',
        "пн, 3 июн. 2024 г. в 10:00, Менеджер <manager@example.com>:",
    ):
        r = split_reply(f"Ок, договорились.\n\n{header}\n> Когда встречаемся?\n")
        assert r.reply == "Ок, договорились.\n", header


def test_on_wrote_wrapped_over_two_lines_and_signatures() -> None:
    text = "Sounds good.\n\nSent from my iPhone\n\nOn Mon, Jun 3, 2024 at 10:00 AM John Smith <\njohn@example.com> wrote:\n> When?\n"
    r = split_reply(text)
    assert r.reply == "Sounds good.\n"
    assert r.signature == "Sent from my iPhone"
    assert split_reply("Да.\n\nОтправлено с iPhone\n").reply == "Да.\n"
    assert split_reply("Thanks!\n-- \nJohn\n+1 555 0100\n").reply == "Thanks!\n"


def test_inline_answers_are_kept() -> None:
    text = "On Mon, Jun 3, 2024 at 10:00 AM John <j@example.com> wrote:\n> Price?\n\n100 USD.\n\n> Date?\n\nFriday.\n"
    assert norm(split_reply(text).reply) == "100 USD. Friday."


def test_html_quote_markup_of_common_clients() -> None:
    cases = {
        "gmail": '<div dir="ltr">New text</div><br><div class="gmail_quote"><div class="gmail_attr">On Mon wrote:</div><blockquote>old</blockquote></div>',
        "outlook": '<div>New text</div><hr style="display:inline-block;width:98%"><div id="divRplyFwdMsg"><b>From:</b> X</div><div>old</div>',
        "outlook_desktop": '<p>New text</p><div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm"><p><b>From:</b> X</p></div><p>old</p>',
        "apple": '<div>New text</div><div><br><blockquote type="cite"><div>On 3 Jun, X wrote:</div>old</blockquote></div>',
        "yandex": '<div>New text</div><div>03.06.2024, 10:00, "Менеджер" &lt;manager@example.com&gt;:</div><blockquote style="border-left:1px solid #ccc">old</blockquote>',
        "mailru": '<div>New text</div><div class="mail-quote-collapse"><div>Понедельник, 3 июня 2024, 10:00 +03:00 от Менеджер:</div>old</div>',
        "yahoo": '<div>New text</div><div id="yahoo_quoted_123" class="yahoo_quoted">old</div>',
    }
    for name, html in cases.items():
        _head, cut = cut_html_quote(html)
        assert cut, name
        r = split_reply_html(html)
        assert r.reply_text == "New text\n", name
        assert "old" not in r.reply_html, name


def test_html_without_quote_is_unchanged() -> None:
    assert cut_html_quote("<p>Hello</p>") == ("<p>Hello</p>", False)
