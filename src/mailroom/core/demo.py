"""The demo sandbox: a private Dovecot on loopback (or, where Dovecot is not installed, pymap, a
pure-Python IMAP server), a small authenticated SMTP server (aiosmtpd) that delivers to it, realistic
Russian and English correspondence, and a mailbox already connected to it."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEMO_EMAIL = "manager@company.test"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - a loopback sandbox


def sample_correspondence(now: datetime | None = None) -> Iterator[tuple[str, bytes]]:
    """(folder, raw) pairs: threads with clients in Russian (UTF-8, KOI8-R, windows-1251) and English.
    The same ``now`` (to the second) gives the same bytes: Message-IDs, dates and MIME boundaries
    derive from it, so mail seeded again into a fresh server is recognised, not imported twice."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    stamp = int(now.timestamp())
    clients = [
        ("Иван Петров", "ivan.petrov@romashka.test", "ru"),
        ("Anna Smith", "anna@acme-client.test", "en"),
        ("Ольга Смирнова", "olga@stroymontazh.test", "ru"),
        ("John Doe", "john@globex.test", "en"),
    ]
    topics_ru = ["Коммерческое предложение", "Счёт на оплату", "Договор поставки", "Встреча в четверг"]
    topics_en = ["Quote request", "Invoice", "Delivery schedule", "Meeting on Thursday"]
    t = now - timedelta(days=20)
    n = 0
    for ci, (name, addr, lang) in enumerate(clients):
        topics = topics_ru if lang == "ru" else topics_en
        for ti, topic in enumerate(topics):
            parent_id: str | None = None
            refs: list[str] = []
            for turn in range(3):
                n += 1
                t += timedelta(hours=3, minutes=17 * n % 60)
                incoming = turn % 2 == 0
                msg = EmailMessage()
                mid = f"<demo-{stamp}-{n}@{'romashka.test' if incoming else 'company.test'}>"
                subj = topic if turn == 0 else "Re: " + topic
                if lang == "ru":
                    body = (
                        f"Здравствуйте!\n\nПо теме '{topic}': прошу прислать подробности до пятницы.\n\nС уважением,\n{name}"
                        if incoming else "Добрый день!\n\nВсё получили, ответим сегодня.\n\n--\nМенеджер, ООО 'Компания'"
                    )
                else:
                    body = (
                        f"Hello,\n\nRegarding {topic.lower()}: could you send the details by Friday?\n\nBest,\n{name}"
                        if incoming else "Hi,\n\nThanks, we will get back to you today.\n\n--\nManager, Company Ltd"
                    )
                if parent_id:
                    quote = "\n".join("> " + line for line in body.splitlines())
                    body += f"\n\n{('пишет' if lang == 'ru' else 'wrote')}:\n{quote}"
                charset = "utf-8"
                if lang == "ru" and ti == 1:
                    charset = "koi8-r"
                elif lang == "ru" and ti == 2:
                    charset = "windows-1251"
                sender = (name, addr) if incoming else ("Менеджер" if lang == "ru" else "Manager", DEMO_EMAIL)
                rcpt = (("Менеджер" if lang == "ru" else "Manager", DEMO_EMAIL) if incoming else (name, addr))
                msg["From"] = f"{Header(sender[0], 'utf-8').encode()} <{sender[1]}>"
                msg["To"] = f"{Header(rcpt[0], 'utf-8').encode()} <{rcpt[1]}>"
                msg["Subject"] = subj
                msg["Date"] = format_datetime(t)
                msg["Message-ID"] = mid
                if parent_id:
                    msg["In-Reply-To"] = parent_id
                    msg["References"] = " ".join(refs)
                msg.set_content(body, charset=charset)
                if ci == 0 and ti == 0 and turn == 0:
                    msg.add_attachment(
                        "Позиция;Цена\nКирпич;12.50\n".encode("windows-1251"),
                        maintype="text", subtype="csv", filename="Прайс-лист.csv",
                    )
                    msg.set_boundary(f"demo-{stamp}-{n}")
                parent_id = mid
                refs.append(mid)
                yield ("INBOX" if incoming else "Sent", msg.as_bytes())


class _DeliverHandler:
    def __init__(self, deliver: Callable[[str, bytes], None], local_domains: set[str]) -> None:
        self.deliver = deliver
        self.local_domains = local_domains

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for rcpt in envelope.rcpt_tos:
            if rcpt.split("@")[-1].lower() in self.local_domains:
                await asyncio.get_running_loop().run_in_executor(None, self.deliver, rcpt, envelope.content)
        return "250 OK delivered"


class PymapSandbox:
    """The fallback when Dovecot is not installed: pymap (a pure-Python IMAP server from PyPI) with its
    in-memory backend, one user (the demo mailbox), on loopback. The same surface as the demo uses of
    :class:`~mailroom.testing.servers.Dovecot`; mail for other local users is dropped (they have no
    mailbox here). In memory: each start is a fresh server (a new UIDVALIDITY, which the sync
    handles without duplicates)."""

    def __init__(self, email: str, password: str) -> None:
        self.email, self.password = email, password
        self.imap_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.users: set[str] = set()

    def start(self, timeout: float = 15.0) -> PymapSandbox:
        from mailroom.testing.servers import _set_pdeathsig, free_port

        self.imap_port = free_port()
        exe = Path(sys.executable).with_name("pymap")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pymap"]
        self.proc = subprocess.Popen(  # noqa: S603 - our own arguments, loopback only
            [*cmd, "--host", "127.0.0.1", "--port", str(self.imap_port), "--no-tls", "dict",
             "--demo-user", self.email, "--demo-password", self.password],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_set_pdeathsig,  # it dies with the demo, even with a kill -9 of it
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._session():
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    self.stop()
                    raise RuntimeError(f"the pure-Python IMAP server (pymap) did not start: {err[-500:]}") from None
                time.sleep(0.1)
        with self._session() as imap:
            imap.create("Sent")  # no SPECIAL-USE here: found by its well-known name
        return self

    @contextlib.contextmanager
    def _session(self) -> Iterator[imaplib.IMAP4]:
        imap = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=5)
        try:
            imap.login(self.email, self.password)
            yield imap
        finally:
            with contextlib.suppress(Exception):
                imap.logout()

    def add_user(self, email: str, password: str) -> None:
        """Only the demo mailbox exists here (the server was started with its password)."""
        if email.lower() == self.email:
            self.users.add(self.email)

    def deliver(self, email: str, raw: bytes, folder: str = "INBOX") -> None:
        self.deliver_many(email, [raw], folder)

    def deliver_many(self, email: str, raws: Iterable[bytes], folder: str = "INBOX") -> int:
        if email.lower() != self.email:
            log.info("demo.dropped", extra={"rcpt": email})
            return 0
        n = 0
        with self._session() as imap:
            for raw in raws:
                result: Any = imap.append(folder, "", "", raw)  # typeshed: str; really (typ, data)
                typ, data = result
                if typ != "OK":
                    raise RuntimeError(f"APPEND to {folder} failed: {data!r}")
                n += 1
        return n

    def count(self, email: str, folder: str = "INBOX") -> int:
        with self._session() as imap:
            typ, data = imap.status(folder, "(MESSAGES)")
        m = re.search(rb"MESSAGES (\d+)", data[0] or b"") if typ == "OK" and data else None
        return int(m.group(1)) if m else 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _sample_time(run_dir: Path) -> datetime:
    """When the sample mail was first written, kept in the run dir: the in-memory pymap server is
    seeded again on every start, and must get the very same messages (a Dovecot's mail stays)."""
    path = run_dir / "sample-mail-time"
    try:
        return datetime.fromtimestamp(int(path.read_text().strip()), UTC)
    except (OSError, ValueError, OverflowError):
        now = datetime.now(UTC).replace(microsecond=0)
        path.write_text(f"{int(now.timestamp())}\n")
        return now


def demo_setup(run_dir: Path) -> dict[str, object]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    from mailroom.accounts.services import team_get_or_create
    from mailroom.mailboxes.models import Mailbox
    from mailroom.mailboxes.services import mailbox_create
    from mailroom.testing.servers import Dovecot, ServersNotInstalled, free_port

    run_dir.mkdir(parents=True, exist_ok=True)
    dovecot: Dovecot | PymapSandbox = Dovecot(run_dir)
    try:
        dovecot.start()
    except ServersNotInstalled as exc:
        log.warning("demo.no_dovecot", extra={"error": str(exc)})
        print(f"Dovecot is not installed ({exc}); the demo uses pymap, a pure-Python IMAP server, instead "
              "(in memory; scripts/install-servers installs Dovecot).", file=sys.stderr)
        dovecot = PymapSandbox(DEMO_EMAIL, DEMO_PASSWORD).start()
    fresh = DEMO_EMAIL not in dovecot.users
    dovecot.add_user(DEMO_EMAIL, DEMO_PASSWORD)
    for addr in ("ivan.petrov@romashka.test", "anna@acme-client.test", "olga@stroymontazh.test", "john@globex.test"):
        dovecot.add_user(addr, DEMO_PASSWORD)

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password.decode() == DEMO_PASSWORD
        return AuthResult(success=ok)

    smtp_port = free_port()
    controller = Controller(
        _DeliverHandler(lambda rcpt, raw: dovecot.deliver(rcpt, raw), {"company.test", "romashka.test",
                        "acme-client.test", "stroymontazh.test", "globex.test"}),
        hostname="127.0.0.1", port=smtp_port, authenticator=authenticator, auth_require_tls=False,
    )
    controller.start()

    seeded = 0
    if fresh and dovecot.count(DEMO_EMAIL, "INBOX") == 0:
        by_folder: dict[str, list[bytes]] = {}
        for folder, raw in sample_correspondence(_sample_time(run_dir)):
            by_folder.setdefault(folder, []).append(raw)
        for folder, raws in by_folder.items():
            seeded += dovecot.deliver_many(DEMO_EMAIL, raws, folder)

    team = team_get_or_create(name="Default")
    mb = Mailbox.objects.filter(team=team, email=DEMO_EMAIL).first()
    if mb is None:
        mb = mailbox_create(
            team=team, email=DEMO_EMAIL, name="Demo mailbox", imap_host="127.0.0.1", imap_port=dovecot.imap_port,
            imap_security="plain", smtp_host="127.0.0.1", smtp_port=smtp_port, smtp_security="plain",
            password=DEMO_PASSWORD, contact_policy="senders",
        )
    else:  # ports are new on every start
        Mailbox.objects.filter(pk=mb.pk).update(
            imap_port=dovecot.imap_port, smtp_port=smtp_port, next_attempt_at=None, consecutive_failures=0
        )

    stopped = threading.Event()

    def stop() -> None:
        if not stopped.is_set():
            stopped.set()
            controller.stop()
            dovecot.stop()

    return {"email": DEMO_EMAIL, "password": DEMO_PASSWORD, "imap_port": dovecot.imap_port,
            "smtp_port": smtp_port, "seeded": seeded, "stop": stop}
