"""IMAP adapter: IMAPClient for the conversation (login, LIST, SELECT, IDLE), plain ``imaplib`` for
the bulk FETCH hot path (IMAPClient's response parser is several times slower on big FETCHes).

Errors are translated into :class:`ImapError` subclasses whose message says what to fix.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import re
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from imapclient import IMAPClient
from imapclient import exceptions as imapexc
from imapclient.imap_utf7 import decode as utf7_decode
from imapclient.imap_utf7 import encode as utf7_encode

from mailroom.mailboxes.connect import ConnectionSettings, ImapError, describe_socket_error


@dataclass(frozen=True, slots=True)
class ServerFolder:
    raw_name: str  # modified UTF-7 as on the wire
    name: str  # decoded
    flags: tuple[str, ...]
    delimiter: str
    role: str  # inbox/sent/archive/drafts/junk/trash/all/other


@dataclass(frozen=True, slots=True)
class FolderStatus:
    uidvalidity: int
    uidnext: int | None
    exists: int
    highestmodseq: int | None


@dataclass(frozen=True, slots=True)
class Fetched:
    uid: int
    raw: bytes
    internal_date: datetime | None
    gm_thread_id: str = ""  # Gmail's X-GM-THRID, when the server has X-GM-EXT-1


SPECIAL_USE = {
    b"\\sent": "sent",
    b"\\archive": "archive",
    b"\\drafts": "drafts",
    b"\\junk": "junk",
    b"\\trash": "trash",
    b"\\all": "all",
}
# Only for servers that do not announce SPECIAL-USE at all (rare): well-known English names.
FALLBACK_NAMES = {"sent": "sent", "sent items": "sent", "sent messages": "sent", "sent mail": "sent"}

_FETCH_UID = re.compile(rb"UID (\d+)")
_FETCH_DATE = re.compile(rb'INTERNALDATE "([^"]+)"')
_FETCH_GM_THRID = re.compile(rb"X-GM-THRID (\d+)")
_FETCH_SIZE = re.compile(rb"\(.*?UID (\d+).*?RFC822\.SIZE (\d+)|\(.*?RFC822\.SIZE (\d+).*?UID (\d+)")


def compress_uids(uids: Sequence[int]) -> str:
    """[1,2,3,7,9,10] -> '1:3,7,9:10' (keeps IMAP command lines short)."""
    if not uids:
        return ""
    s = sorted(uids)
    out: list[str] = []
    start = prev = s[0]
    for u in s[1:]:
        if u == prev + 1:
            prev = u
            continue
        out.append(f"{start}:{prev}" if start != prev else str(start))
        start = prev = u
    out.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(out)


def _parse_internaldate(value: bytes) -> datetime | None:
    try:
        # 17-Jul-1996 02:44:25 -0700
        return datetime.strptime(value.decode(), "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        try:
            return parsedate_to_datetime(value.decode())
        except (TypeError, ValueError):
            return None


class ImapSession:
    """One logged-in IMAP connection."""

    def __init__(self, client: IMAPClient) -> None:
        self.client = client
        # IMAPClient turns imaplib's debug level up to 5 to route its protocol trace into the
        # "imapclient.imaplib" logger. imaplib then formats the repr() of every response, message
        # bodies included, whether or not anything is logged: on a bulk FETCH that cost ~1 ms of CPU
        # per message, 10x the fetch itself. Keep the trace only when that logger would show it.
        if not logging.getLogger("imapclient.imaplib").isEnabledFor(logging.DEBUG):
            client._imap.debug = 0
        self.capabilities: frozenset[str] = frozenset(
            c.decode().upper() if isinstance(c, bytes) else str(c).upper() for c in client.capabilities()
        )
        self.selected: str | None = None
        self.condstore_enabled = False

    # --- connection -----------------------------------------------------------------------------
    @classmethod
    def open(cls, cs: ConnectionSettings, timeout: float = 30.0) -> ImapSession:
        try:
            if cs.security == "ssl":
                ctx = ssl.create_default_context()
                if not cs.tls_verify:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                client = IMAPClient(cs.host, port=cs.port, ssl=True, ssl_context=ctx, timeout=timeout)
            else:
                client = IMAPClient(cs.host, port=cs.port, ssl=False, timeout=timeout)
                if cs.security == "starttls":
                    ctx = ssl.create_default_context()
                    if not cs.tls_verify:
                        ctx.check_hostname = False
                        ctx.verify_mode = ssl.CERT_NONE
                    client.starttls(ctx)
        except (OSError, imaplib.IMAP4.error, imapexc.IMAPClientError) as exc:
            raise describe_socket_error("IMAP", cs, exc) from exc
        try:
            if cs.auth == "oauth2":
                client.oauth2_login(cs.username, cs.access_token)
            else:
                client.login(cs.username, cs.password)
        except (imapexc.LoginError, imaplib.IMAP4.error) as exc:
            with contextlib.suppress(OSError):
                client.shutdown()
            text = exc.args[0] if exc.args else exc
            if isinstance(text, bytes):
                text = text.decode(errors="replace")
            raise ImapError(
                "auth",
                f"IMAP login to {cs.host}:{cs.port} as {cs.username!r} was refused: {text}. Check the "
                "user name and password (Gmail, Yandex and Mail.ru need an app password or OAuth2, and IMAP "
                "access enabled in the mailbox settings).",
            ) from exc
        except OSError as exc:
            raise describe_socket_error("IMAP", cs, exc) from exc
        return cls(client)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead connection
            self.client.logout()

    @property
    def imap(self) -> imaplib.IMAP4:
        return self.client._imap  # the underlying imaplib object, for the fast FETCH path

    def has(self, cap: str) -> bool:
        return cap.upper() in self.capabilities

    # --- folders --------------------------------------------------------------------------------
    def folders(self) -> list[ServerFolder]:
        if self.has("SPECIAL-USE") and self.has("LIST-EXTENDED"):
            typ, data = self.imap._simple_command("LIST", '""', '"*"', "RETURN", "(SPECIAL-USE)")  # type: ignore[attr-defined]
            _, data = self.imap._untagged_response(typ, data, "LIST")  # type: ignore[attr-defined]
            listing = self.client._proc_folder_list(data)
        else:
            listing = self.client.list_folders()
        has_special = any(
            f.lower() in SPECIAL_USE for flags, _, _ in listing for f in (flags or ()) if isinstance(f, bytes)
        )
        out: list[ServerFolder] = []
        for flags, delim, name in listing:
            bflags = tuple(f if isinstance(f, bytes) else str(f).encode() for f in flags or ())
            if any(f.lower() == b"\\noselect" or f.lower() == b"\\nonexistent" for f in bflags):
                continue
            # IMAPClient hands back decoded (unicode) names; keep the wire form (modified UTF-7) too.
            decoded = name if isinstance(name, str) else utf7_decode(name)
            raw_wire = utf7_encode(decoded).decode("ascii")
            role = "other"
            if decoded.upper() == "INBOX":
                role = "inbox"
            else:
                for f in bflags:
                    if f.lower() in SPECIAL_USE:
                        role = SPECIAL_USE[f.lower()]
                        break
                if role == "other" and not has_special:
                    role = FALLBACK_NAMES.get(decoded.lower(), "other")
            out.append(
                ServerFolder(
                    raw_name=raw_wire,
                    name=decoded,
                    flags=tuple(f.decode(errors="replace") for f in bflags),
                    delimiter=(delim.decode() if isinstance(delim, bytes) else delim or "/"),
                    role=role,
                )
            )
        return out

    def examine(self, name: str) -> FolderStatus:
        """Select read-only (EXAMINE): we never change flags, \\Seen included."""
        try:
            if self.has("CONDSTORE") and not self.condstore_enabled and self.has("ENABLE"):
                try:
                    self.client.enable("CONDSTORE")
                    self.condstore_enabled = True
                except imapexc.IMAPClientError:
                    pass
            info = self.client.select_folder(name, readonly=True)
        except imapexc.IMAPClientError as exc:
            raise ImapError("folder", f"cannot open folder {name!r}: {exc}") from exc
        # IMAPClient read the SELECT's untagged responses but leaves them in imaplib's dict: clear it,
        # so that an EXISTS found there later (see idle_wait) is a real announcement.
        self.imap.untagged_responses.clear()
        self.selected = name
        modseq = info.get(b"HIGHESTMODSEQ")
        uidnext = info.get(b"UIDNEXT")
        return FolderStatus(
            uidvalidity=int(info[b"UIDVALIDITY"]),
            uidnext=int(uidnext) if uidnext is not None else None,
            exists=int(info.get(b"EXISTS", 0)),
            highestmodseq=int(modseq) if modseq is not None else None,
        )

    def status(self, name: str) -> FolderStatus:
        items = ["UIDVALIDITY", "UIDNEXT", "MESSAGES"]
        if self.has("CONDSTORE"):
            items.append("HIGHESTMODSEQ")
        st = self.client.folder_status(name, items)
        modseq = st.get(b"HIGHESTMODSEQ")
        return FolderStatus(
            uidvalidity=int(st[b"UIDVALIDITY"]),
            uidnext=int(st[b"UIDNEXT"]) if b"UIDNEXT" in st else None,
            exists=int(st.get(b"MESSAGES", 0)),
            highestmodseq=int(modseq) if modseq is not None else None,
        )

    # --- searching and fetching -----------------------------------------------------------------
    def uids_above(self, uid: int) -> list[int]:
        """All UIDs > uid in the selected folder, ascending."""
        typ, data = self.imap.uid("SEARCH", f"UID {uid + 1}:*")
        if typ != "OK":
            raise ImapError("protocol", f"UID SEARCH failed: {data!r}")
        found = [int(x) for x in b" ".join(d for d in data if d).split()]
        return sorted(u for u in found if u > uid)

    def uids_below(self, uid: int, limit: int) -> list[int]:
        """Up to ``limit`` highest UIDs < uid, descending (backfill, newest first)."""
        if uid <= 1:
            return []
        typ, data = self.imap.uid("SEARCH", f"UID 1:{uid - 1}")
        if typ != "OK":
            raise ImapError("protocol", f"UID SEARCH failed: {data!r}")
        found = sorted((int(x) for x in b" ".join(d for d in data if d).split()), reverse=True)
        return [u for u in found if u < uid][:limit]

    def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        if not uids:
            return {}
        typ, data = self.imap.uid("FETCH", compress_uids(uids), "(RFC822.SIZE)")
        if typ != "OK":
            raise ImapError("protocol", f"UID FETCH RFC822.SIZE failed: {data!r}")
        out: dict[int, int] = {}
        for line in data:
            if not isinstance(line, bytes):
                continue
            m = _FETCH_SIZE.search(line)
            if m:
                if m.group(1):
                    out[int(m.group(1))] = int(m.group(2))
                else:
                    out[int(m.group(4))] = int(m.group(3))
        return out

    def fetch(self, uids: Sequence[int]) -> list[Fetched]:
        """Fetch whole messages (BODY.PEEK[]: never sets \\Seen) with the fast imaplib path."""
        if not uids:
            return []
        items = "(UID INTERNALDATE X-GM-THRID BODY.PEEK[])" if self.has("X-GM-EXT-1") else "(UID INTERNALDATE BODY.PEEK[])"
        typ, data = self.imap.uid("FETCH", compress_uids(uids), items)
        if typ != "OK":
            raise ImapError("fetch", f"UID FETCH failed: {data!r}")
        return list(parse_fetch_response(data))

    # --- IDLE -----------------------------------------------------------------------------------
    def idle_wait(self, timeout: float) -> bool:
        """IDLE on the selected folder up to ``timeout`` seconds. True if the server announced a change.

        One ``idle_check`` call: imaplib reads through a buffered file, so polling the socket in
        short slices could leave an announcement sitting in the buffer unseen."""
        # An EXISTS the server sent during our last SEARCH/FETCH sits in imaplib's untagged
        # responses; IDLE would not repeat it, so report it now.
        pending = self.imap.untagged_responses
        if any(pending.pop(k, None) for k in ("EXISTS", "RECENT")):
            return True
        if not self.has("IDLE"):
            self.client.noop()
            return False
        self.client.idle()
        responses: list[Any] = []
        try:
            # The server may have sent an EXISTS in the same packet as "+ idling": it then sits in
            # imaplib's read buffer, where polling the socket cannot see it.
            if not self._buffered():
                responses = list(self.client.idle_check(timeout=timeout))
        finally:
            _, after = self.client.idle_done()
            responses.extend(after)
        return any(
            len(r) >= 2 and isinstance(r[1], bytes) and r[1] in (b"EXISTS", b"RECENT", b"EXPUNGE", b"FETCH")
            for r in responses
        )

    def _buffered(self) -> bool:
        """Is there unread data in imaplib's buffer (without blocking)?"""
        sock = self.client.socket()
        previous = sock.gettimeout()
        sock.setblocking(False)
        try:
            return bool(self.imap.file.peek(1))  # type: ignore[union-attr]
        except (BlockingIOError, ssl.SSLWantReadError, TimeoutError):
            return False
        finally:
            sock.settimeout(previous)


def parse_fetch_response(data: list[Any]) -> Iterator[Fetched]:
    """Parse imaplib's FETCH result: tuples (prefix, literal) possibly followed by a trailer line."""
    n = len(data)
    i = 0
    while i < n:
        item = data[i]
        if isinstance(item, tuple) and len(item) == 2:
            prefix, literal = item
            trailer = data[i + 1] if i + 1 < n and isinstance(data[i + 1], bytes) else b""
            m = _FETCH_UID.search(prefix) or _FETCH_UID.search(trailer)
            if m is not None:
                d = _FETCH_DATE.search(prefix) or _FETCH_DATE.search(trailer)
                g = _FETCH_GM_THRID.search(prefix) or _FETCH_GM_THRID.search(trailer)
                yield Fetched(
                    uid=int(m.group(1)),
                    raw=literal,
                    internal_date=_parse_internaldate(d.group(1)) if d else None,
                    gm_thread_id=g.group(1).decode() if g else "",
                )
        i += 1


def is_network_error(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, socket.timeout, imaplib.IMAP4.abort, ssl.SSLError, EOFError))
