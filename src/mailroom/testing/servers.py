"""Private Dovecot and Postfix instances for tests, benchmarks and ``mailroom demo``.

Everything an instance needs (config, sockets, state, queue, mail, logs, TLS key) lives
under the ``run_dir`` it is given, every listener is bound to 127.0.0.1 on a free port
chosen at start, and nothing touches the system-wide configuration in /etc, so several
instances (e.g. parallel test runs) can coexist.

Layout of a run dir::

    tls/cert.pem, tls/key.pem        self-signed ECDSA cert for localhost/127.0.0.1
    dovecot/dovecot.conf             generated config
    dovecot/users/<domain>/<local>   one passwd-file per user (plain passwords)
    dovecot/dovecot.log              Dovecot's log
    dovecot/run/, dovecot/state/     base_dir (sockets) and state_dir
    mail/<domain>/<local>/Maildir    mail (Maildir++, folders as .Name)
    postfix/etc/main.cf, master.cf   generated Postfix config + hash: lookup tables
    postfix/queue/, postfix/data/    queue_directory, data_directory
    postfix/maillog                  Postfix's log (via postlogd, no syslog needed)

(With a long run dir path, dovecot/run and postfix/queue are symlinks to short temp
dirs, since unix socket paths are limited to 107 bytes; those are removed at stop.)

Privileges. Started as root (CI, the dev machine): Dovecot's master runs as root,
login processes drop to dovenull, mail processes to the system "mail" user (Dovecot
refuses uid 0 for mail), auth stays root. Postfix's master runs as root and its
daemons as "postfix", without chroot. Those users must reach the run dir, so it and
its parents must be world-traversable: ``tempfile.mkdtemp()`` (made 0755) is fine,
pytest's ``/tmp/pytest-of-root`` (0700) is not; ``start()`` checks and says so.
Started as another user, Dovecot runs wholly as that user (untested here; CI runs as
root); Postfix cannot (its master must be started by root).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime
import imaplib
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

LOOPBACK = "127.0.0.1"

_SBIN_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin"]
)
# Unix socket paths are limited to 107 bytes; Dovecot's base_dir holds sockets up to
# ~30 bytes deeper than base_dir itself.
_MAX_BASE_DIR_LEN = 70

INSTALL_HINT = "run scripts/install-servers (as root) to install Dovecot, Postfix and friends"


class ServerError(RuntimeError):
    """A server failed to start, stop or answer an admin command."""


class ServersNotInstalled(ServerError):
    """Dovecot/Postfix binaries are missing; run ``scripts/install-servers``."""


# --------------------------------------------------------------------------- helpers


def _which(name: str) -> str | None:
    return shutil.which(name, path=_SBIN_PATH)


def _postfix_daemon_dir() -> Path:
    postconf = _which("postconf")
    if postconf:
        out = subprocess.run(  # noqa: S603
            [postconf, "-d", "-h", "daemon_directory"], capture_output=True, text=True, check=False
        )
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    return Path("/usr/lib/postfix/sbin")


def missing_server_binaries(*, dovecot: bool = True, postfix: bool = True) -> list[str]:
    """Names of the programs the servers need that are not installed (empty = all there)."""
    missing: list[str] = []
    if dovecot:
        missing += [n for n in ("dovecot", "doveadm") if _which(n) is None]
        libexec = Path("/usr/lib/dovecot")
        missing += [f"dovecot {n} (dovecot-{n}d)" for n in ("imap", "lmtp") if not (libexec / n).exists()]
    if postfix:
        missing += [n for n in ("postconf", "postmap", "postqueue") if _which(n) is None]
        if not missing and not (_postfix_daemon_dir() / "master").exists():
            missing.append("postfix master")
    return missing


def _require(name: str) -> str:
    path = _which(name)
    if path is None:
        raise ServersNotInstalled(f"{name} not found: {INSTALL_HINT}")
    return path


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _atomic_write(path: Path, data: str | bytes, mode: int = 0o644, *, backdate: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, mode)
    if backdate:
        # Postfix re-reads (sleeping 300 ms each time) a config file modified in the
        # last second, waiting for a human editor to finish; ours are written whole.
        past = time.time() - 5
        os.utime(tmp, (past, past))
    os.replace(tmp, path)


def _check_no_control(value: str, what: str, forbidden: str = "") -> None:
    if not value or any(c.isspace() or ord(c) < 32 or c in forbidden for c in value):
        raise ValueError(f"invalid {what}: {value!r}")


def _uid_set(uids: Iterable[int]) -> str:
    """IMAP-style compact set: [1,2,3,7] -> "1:3,7"."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _check_traversable(run_dir: Path, who: str) -> None:
    for parent in run_dir.parents:
        if not parent.stat().st_mode & 0o001:
            raise ServerError(
                f"{parent} is not world-traversable, so {who} could not reach {run_dir}; "
                "use a run dir such as tempfile.mkdtemp() (it is made 0755)"
            )


def live_processes() -> dict[int, list[str]]:
    """Every process that exists and is not a zombie: pid -> its /proc stat fields after the command
    name (state, ppid, pgrp, session, ...)."""
    found: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[0] != "Z":
                found[int(entry)] = fields
    return found


def process_tree(root: int, parent_of: Mapping[int, int] | None = None) -> set[int]:
    """``root`` and every process below it (children, theirs, ...). ``parent_of``: pid -> parent
    pid, by default from :func:`live_processes`."""
    if parent_of is None:
        parent_of = {pid: int(fields[1]) for pid, fields in live_processes().items()}
    children: dict[int, list[int]] = {}
    for pid, parent in parent_of.items():
        children.setdefault(parent, []).append(pid)
    tree, frontier = {root}, [root]
    while frontier:
        for child in children.get(frontier.pop(), ()):
            if child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def process_alive(pid: int) -> bool:
    """Process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _children(ppid: int) -> list[int]:
    return [pid for pid, fields in live_processes().items() if int(fields[1]) == ppid]


def _set_pdeathsig() -> None:
    """In the child before exec: die with SIGTERM when the parent (test runner) dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def ensure_tls_cert(directory: Path) -> tuple[Path, Path]:
    """Self-signed ECDSA P-256 certificate for localhost/127.0.0.1; reused if present."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("mx.mailroom.test"),
                    x509.IPAddress(ipaddress.IPv4Address(LOOPBACK)),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    _atomic_write(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


_SYSTEM_PYTHON = "/usr/bin/python3"  # python3-minimal, installed by scripts/install-servers

# Bulk Maildir writer, run as the mail user: reads (4-byte length, message) frames from
# stdin and creates new/<secs>.M<usecs>P<id>Q<n>.<host>,S=<size> files. Dovecot assigns
# UIDs to new mail in (secs, usecs) order, so each message gets a distinct increasing
# pair and UIDs follow the input order. Prints the number of messages written.
_MAILDIR_WRITER = r"""
import os, struct, sys
new_dir, base, ident = sys.argv[1], int(sys.argv[2]), sys.argv[3]
host = sys.argv[4].replace("/", "\\057").replace(":", "\\072")
read = sys.stdin.buffer.read
n = 0
while True:
    head = read(4)
    if len(head) < 4:
        break
    size = struct.unpack(">I", head)[0]
    data = memoryview(read(size))
    secs, usecs = divmod(n, 1000000)
    name = "%d.M%dP%sQ%d.%s,S=%d" % (base + secs, usecs, ident, n, host, size)
    fd = os.open(os.path.join(new_dir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)
    n += 1
print(n)
"""


class _Daemon:
    """A foreground daemon run as our child in its own process group."""

    _live: set[_Daemon] = set()
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _spawn(self, argv: Sequence[str], output: Path, env: Mapping[str, str] | None = None) -> None:
        with open(output, "ab") as out:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argv of known binaries
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_set_pdeathsig,
                env=dict(env) if env is not None else None,
            )
        with self._lock:
            self._live.add(self)

    def _terminate(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        with self._lock:
            self._live.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        # Children that outlived the master (shouldn't happen) share its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        self._terminate()

    @classmethod
    def _stop_all(cls) -> None:
        for daemon in list(cls._live):
            with contextlib.suppress(Exception):
                daemon.stop()


atexit.register(_Daemon._stop_all)


# --------------------------------------------------------------------------- Dovecot


@dataclass(frozen=True)
class MailUser:
    """A mailbox user on a running :class:`Dovecot`, with a few shortcuts."""

    email: str
    password: str
    dovecot: Dovecot

    @property
    def host(self) -> str:
        return self.dovecot.host

    def imap(self, *, tls: Literal["none", "starttls", "implicit"] = "none") -> imaplib.IMAP4:
        """A logged-in imaplib connection (certificate verified against the test cert)."""
        conn: imaplib.IMAP4
        if tls == "implicit":
            conn = imaplib.IMAP4_SSL(
                self.host, self.dovecot.imaps_port, ssl_context=self.dovecot.ssl_context()
            )
        else:
            conn = imaplib.IMAP4(self.host, self.dovecot.imap_port)
            if tls == "starttls":
                conn.starttls(ssl_context=self.dovecot.ssl_context())
        conn.login(self.email, self.password)
        return conn

    def deliver(self, raw: bytes, folder: str = "INBOX") -> None:
        self.dovecot.deliver(self.email, raw, folder)

    def deliver_many(self, messages: Iterable[bytes], folder: str = "INBOX") -> int:
        return self.dovecot.deliver_many(self.email, messages, folder)

    def count(self, folder: str = "INBOX") -> int:
        return self.dovecot.count(self.email, folder)


SPECIAL_USE_FOLDERS: dict[str, str] = {
    "Drafts": "\\Drafts",
    "Sent": "\\Sent",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}


class Dovecot(_Daemon):
    """A private Dovecot (IMAP, IMAPS, LMTP, auth for Postfix SASL) under ``run_dir``.

    Users live in a passwd-file with plain passwords; ``add_user`` works while running
    (Dovecot re-reads the file when it changes). Mail is Maildir++ under
    ``run_dir/mail/<domain>/<local>/Maildir``; every user gets the SPECIAL-USE folders
    Drafts, Sent, Trash, Junk and Archive, auto-created and subscribed.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, host: str = LOOPBACK) -> None:
        super().__init__()
        self.run_dir = Path(run_dir).absolute()
        self.host = host
        self.dir = self.run_dir / "dovecot"
        self.config_path = self.dir / "dovecot.conf"
        # One passwd-file per user (users/<domain>/<local>): Dovecot stats a passwd-file
        # at most once per second, so with a single shared file a user added in the
        # same second as a previous lookup stays invisible for up to a second.
        # A new user's file has never been looked up, so it is read at once.
        self.passwd_dir = self.dir / "users"
        self.log_path = self.dir / "dovecot.log"
        self.mail_root = self.run_dir / "mail"
        self.state_dir = self.dir / "state"
        self.base_dir = self.dir / "run"
        self._short_base: Path | None = None
        self.imap_port = 0
        self.imaps_port = 0
        self.lmtp_port = 0
        self.auth_port = 0
        self.users: dict[str, str] = self._load_users()
        self._user_listeners: list[Callable[[str], None]] = []
        self._users_lock = threading.Lock()
        self._maildir_seq = 0
        # Dovecot refuses uid 0 for mail access: as root, mail belongs to the system
        # "mail" user (uid 8 on Debian); otherwise to whoever runs us.
        self.mail_uid, self.mail_gid = os.geteuid(), os.getegid()
        if self.mail_uid == 0:
            try:
                pw = pwd.getpwnam("mail")
            except KeyError:
                pw = pwd.getpwnam("nobody")
            self.mail_uid, self.mail_gid = pw.pw_uid, pw.pw_gid

    def __repr__(self) -> str:
        return f"<Dovecot {self.host} imap={self.imap_port} imaps={self.imaps_port} lmtp={self.lmtp_port}>"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ lifecycle

    @property
    def cert_path(self) -> Path:
        return self.run_dir / "tls" / "cert.pem"

    def start(self, timeout: float = 10.0) -> Self:
        if self.running:
            return self
        if missing := missing_server_binaries(postfix=False):
            raise ServersNotInstalled(f"missing {', '.join(missing)}: {INSTALL_HINT}")
        dovecot = _require("dovecot")
        for d in (self.dir, self.state_dir, self.mail_root):
            d.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o755)
        if os.geteuid() == 0:
            _check_traversable(self.run_dir, "Dovecot's mail processes (uid 'mail')")
            os.chown(self.mail_root, self.mail_uid, self.mail_gid)
        default_base = self.dir / "run"
        if len(str(default_base)) > _MAX_BASE_DIR_LEN:
            # Socket paths would be too long: keep the sockets in a short temp dir
            # (run_dir/dovecot/run links to it, for people looking around).
            self._short_base = self.base_dir = Path(tempfile.mkdtemp(prefix="mr-dovecot-"))
            self._short_base.chmod(0o755)
            if default_base.is_symlink():
                default_base.unlink()
            elif default_base.exists():
                shutil.rmtree(default_base)
            default_base.symlink_to(self._short_base)
        else:
            self.base_dir = default_base
            self.base_dir.mkdir(exist_ok=True)
        ensure_tls_cert(self.run_dir / "tls")
        self.passwd_dir.mkdir(mode=0o700, exist_ok=True)
        deadline = time.monotonic() + timeout
        last_error = ""
        for _attempt in range(3):
            self.imap_port, self.imaps_port, self.lmtp_port, self.auth_port = _free_ports(4, self.host)
            self.config_path.write_text(self._config())
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn([dovecot, "-F", "-c", str(self.config_path)], self.dir / "stderr.log")
            ports = (self.imap_port, self.imaps_port, self.lmtp_port, self.auth_port)
            while time.monotonic() < deadline:
                if not self.running:
                    break
                if all(_port_open(self.host, p) for p in ports):
                    return self
                time.sleep(0.02)
            log = self._log_since(log_start) + _tail(self.dir / "stderr.log", 10)
            self._terminate()
            last_error = log
            if "Address already in use" not in log:
                break
        self.stop()
        raise ServerError(f"Dovecot did not start (log {self.log_path}):\n{last_error}")

    def stop(self) -> None:
        self._terminate()
        if self._short_base is not None:
            with contextlib.suppress(OSError):
                (self.dir / "run").unlink()
            shutil.rmtree(self._short_base, ignore_errors=True)
            self._short_base = None
            self.base_dir = self.dir / "run"

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""

    def _config(self) -> str:
        uid, gid = self.mail_uid, self.mail_gid
        cert, key = self.cert_path, self.run_dir / "tls" / "key.pem"
        if os.geteuid() == 0:
            # auth reads the passwd-file; as root it needn't care about run dir permissions.
            users = "service auth {\n  user = root\n}\n"
        else:
            me = pwd.getpwuid(uid).pw_name
            # Running wholly as an unprivileged user: no user switching, no chroots.
            users = f"default_login_user = {me}\ndefault_internal_user = {me}\n" + "".join(
                f"service {s} {{\n  chroot =\n}}\n"
                for s in ("anvil", "imap-login", "pop3-login", "submission-login", "imap-urlauth-login")
            )
        special = "".join(
            f"  mailbox {name} {{\n    special_use = {flag}\n    auto = subscribe\n  }}\n"
            for name, flag in SPECIAL_USE_FOLDERS.items()
        )
        h = self.host
        return f"""\
# Generated by mailroom.testing.servers.Dovecot: a private test instance. Do not edit.
instance_name = mailroom-{zlib.crc32(os.fsencode(self.run_dir)):08x}
base_dir = {self.base_dir}
state_dir = {self.state_dir}
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
{users}
protocols = imap lmtp
listen = {h}
shutdown_clients = yes

mail_location = maildir:~/Maildir
mail_fsync = never
first_valid_uid = {uid}
last_valid_uid = 0
first_valid_gid = {gid}
mail_max_userip_connections = 1000
mail_plugins =
recipient_delimiter = +
lmtp_save_to_detail_mailbox = no
imap_idle_notify_interval = 10 secs

auth_mechanisms = plain login
disable_plaintext_auth = no
auth_cache_size = 0
auth_verbose = yes
auth_failure_delay = 0
# Tests log in with wrong passwords on purpose: no per-IP auth penalty (it would
# delay every later login from 127.0.0.1 by up to 15 s). Trusted networks send
# "no-penalty" for IMAP logins; for SASL from Postfix the penalty socket is unusable.
login_trusted_networks = 127.0.0.0/8

ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu {self.passwd_dir}/%Ld/%Ln
}}
userdb {{
  driver = passwd-file
  args = username_format=%Lu {self.passwd_dir}/%Ld/%Ln
  default_fields = uid={uid} gid={gid} home={self.mail_root}/%Ld/%Ln
}}

namespace inbox {{
  inbox = yes
  separator = /
{special}}}

service imap-login {{
  inet_listener imap {{
    address = {h}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = {h}
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {h}
    port = {self.lmtp_port}
  }}
}}
service auth {{
  # SASL for Postfix (smtpd_sasl_type = dovecot, smtpd_sasl_path = inet:HOST:PORT)
  inet_listener auth-client {{
    address = {h}
    port = {self.auth_port}
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol imap {{
  mail_max_userip_connections = 1000
}}
"""

    # ------------------------------------------------------------------ users

    def add_user(self, email_address: str, password: str) -> None:
        """Add (or change the password of) a user; works while running."""
        _check_no_control(email_address, "email address", ":/%")
        local, _, domain = email_address.lower().rpartition("@")
        if not local or not domain or local.startswith("."):
            raise ValueError(f"user must be an email address: {email_address!r}")
        if not password or ":" in password or "\n" in password or "\r" in password:
            raise ValueError("password must be non-empty without ':' or newlines")
        key = f"{local}@{domain}"
        path = self.passwd_dir / domain / local
        with self._users_lock:
            old = self.users.get(key)
            self.users[key] = password
            path.parent.mkdir(parents=True, exist_ok=True)
            old_mtime = path.stat().st_mtime if old is not None and path.exists() else None
            _atomic_write(path, f"{key}:{{PLAIN}}{password}::::::\n", mode=0o600)
            if old_mtime is not None and old != password:
                # Dovecot already loaded this file: it reloads when mtime (seconds) or
                # size differ, checking at most once a second. Force a different mtime,
                # then let a second pass so the next lookup re-reads it.
                stamp = max(time.time(), old_mtime + 1)
                os.utime(path, (stamp, stamp))
                time.sleep(1.05 - time.time() % 1)
        for listener in list(self._user_listeners):
            listener(key)

    def _load_users(self) -> dict[str, str]:
        """Users already in the run dir (e.g. when the demo is restarted)."""
        users: dict[str, str] = {}
        if self.passwd_dir.is_dir():
            for path in sorted(self.passwd_dir.glob("*/*")):
                name, _, rest = path.read_text().partition(":{PLAIN}")
                if rest:
                    users[name] = rest.split(":", 1)[0]
        return users

    def new_user(
        self, domain: str = "company.test", *, prefix: str = "user", password: str | None = None
    ) -> MailUser:
        """Create a user with a unique address (``<prefix>-<random>@<domain>``)."""
        local = re.sub(r"[^a-z0-9.-]+", "-", prefix.lower()).strip("-.")[:40] or "user"
        address = f"{local}-{secrets.token_hex(4)}@{domain.lower()}"
        pw = password if password is not None else secrets.token_urlsafe(12)
        self.add_user(address, pw)
        return MailUser(address, pw, self)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts (only) this instance's self-signed certificate."""
        return ssl.create_default_context(cafile=os.fspath(self.cert_path))

    def on_user_added(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(email)`` after each ``add_user`` (Postfix uses it)."""
        self._user_listeners.append(listener)

    # ------------------------------------------------------------------ doveadm

    def doveadm(self, *args: str, input: bytes | None = None, check: bool = True) -> str:
        """Run ``doveadm -c <our config> ARGS`` and return its stdout."""
        cp = subprocess.run(  # noqa: S603
            [_require("doveadm"), "-c", str(self.config_path), *args],
            input=input,
            capture_output=True,
            timeout=300,
            check=False,
        )
        if check and cp.returncode != 0:
            raise ServerError(
                f"doveadm {' '.join(args)} failed ({cp.returncode}): {cp.stderr.decode(errors='replace').strip()}"
            )
        return cp.stdout.decode(errors="replace")

    def _tab(self, *args: str) -> list[dict[str, str]]:
        out = self.doveadm("-f", "tab", *args)
        lines = out.splitlines()
        if not lines:
            return []
        header = lines[0].split("\t")
        return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:] if line]

    def create_folder(self, email_address: str, folder: str) -> None:
        """Create (and subscribe) ``folder``; no error if it exists."""
        cp_out = subprocess.run(  # noqa: S603
            [
                _require("doveadm"),
                "-c",
                str(self.config_path),
                "mailbox",
                "create",
                "-s",
                "-u",
                email_address,
                folder,
            ],
            capture_output=True,
            check=False,
            timeout=60,
        )
        if cp_out.returncode != 0 and b"already exists" not in cp_out.stderr:
            raise ServerError(
                f"cannot create {folder!r} for {email_address}: {cp_out.stderr.decode().strip()}"
            )

    def folders(self, email_address: str) -> list[str]:
        return [line for line in self.doveadm("mailbox", "list", "-u", email_address).splitlines() if line]

    def deliver(self, email_address: str, raw: bytes, folder: str = "INBOX") -> None:
        """Store one message in ``folder`` (created if missing) via ``doveadm save``."""
        if folder != "INBOX" and folder not in SPECIAL_USE_FOLDERS:
            self.create_folder(email_address, folder)
        self.doveadm("save", "-u", email_address, "-m", folder, input=raw)

    def maildir_path(self, email_address: str, folder: str = "INBOX") -> Path:
        """Filesystem path of ``folder``'s Maildir (ask Dovecot, it knows the layout)."""
        return Path(self.doveadm("mailbox", "path", "-u", email_address, folder).strip())

    def deliver_many(self, email_address: str, messages: Iterable[bytes], folder: str = "INBOX") -> int:
        """Bulk-load messages, in order (UIDs follow iteration order); returns the count.

        Writes the files straight into the folder's Maildir ``new/`` (the documented
        way for an MDA to deliver to Maildir, safe while Dovecot runs) with
        monotonically increasing timestamp names, which Dovecot sorts by when it assigns
        UIDs, then has Dovecot sync the folder once. This is ~2 orders of magnitude
        faster than one ``doveadm save`` per message and several times faster than LMTP.
        """
        if email_address.lower() not in self.users:
            raise ServerError(f"unknown user {email_address}")
        if folder != "INBOX":
            self.create_folder(email_address, folder)
        # Opening the folder makes Dovecot create its Maildir (as the mail user).
        self.doveadm("mailbox", "status", "-u", email_address, "messages", folder)
        path = self.maildir_path(email_address, folder)
        if not (path / "new").is_dir():
            raise ServerError(f"{path}/new missing after opening {folder} for {email_address}")
        # Written by a helper process running as the mail user, so the files get the
        # right owner without a (here surprisingly slow) fchown per file.
        self._maildir_seq += 1
        python = sys.executable
        user: int | None = None
        group: int | None = None
        groups: list[int] | None = None
        if os.geteuid() == 0:
            # The venv's interpreter may sit where the mail user can't reach (/root).
            python = _SYSTEM_PYTHON if os.path.exists(_SYSTEM_PYTHON) else sys.executable
            user, group, groups = self.mail_uid, self.mail_gid, []
        argv = [python, "-I", "-S", "-c", _MAILDIR_WRITER, os.fspath(path / "new")]
        argv += [str(int(time.time())), f"{os.getpid()}_{self._maildir_seq}", socket.gethostname()]
        writer = subprocess.Popen(  # noqa: S603
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=1 << 20,
            user=user,
            group=group,
            extra_groups=groups,
        )
        assert writer.stdin is not None
        sent = 0
        try:
            for raw in messages:
                writer.stdin.write(struct.pack(">I", len(raw)))
                writer.stdin.write(raw)
                sent += 1
        except BrokenPipeError:
            pass  # the writer died; its stderr says why
        out, err = writer.communicate(timeout=600)  # flushes and closes stdin
        if writer.returncode != 0 or out.strip() != str(sent).encode():
            raise ServerError(f"writing to {path} failed: {err.decode(errors='replace').strip()}")
        n = sent
        # One sync assigns UIDs and indexes the folder.
        self.doveadm("mailbox", "status", "-u", email_address, "messages", folder)
        return n

    def deliver_lmtp(
        self, recipient: str, messages: Iterable[bytes], sender: str = "loader@mailroom.test"
    ) -> int:
        """Deliver to ``recipient``'s INBOX over LMTP, pipelined on one connection.

        Slower than :meth:`deliver_many` but exercises the real delivery path.
        """
        import smtplib

        n = 0
        with smtplib.LMTP(self.host, self.lmtp_port, timeout=60) as lmtp:
            for raw in messages:
                lmtp.sendmail(sender, [recipient], raw)
                n += 1
        return n

    def status(self, email_address: str, folder: str = "INBOX") -> dict[str, int]:
        """messages, recent, uidnext, uidvalidity, unseen, highestmodseq of ``folder``."""
        rows = self._tab(
            "mailbox", "status", "-u", email_address,
            "messages recent uidnext uidvalidity unseen highestmodseq", folder,
        )  # fmt: skip
        if not rows:
            raise ServerError(f"no status for {email_address} {folder}")
        return {k: int(v) for k, v in rows[0].items() if k != "mailbox"}

    def count(self, email_address: str, folder: str = "INBOX") -> int:
        return self.status(email_address, folder)["messages"]

    def uidvalidity(self, email_address: str, folder: str = "INBOX") -> int:
        return self.status(email_address, folder)["uidvalidity"]

    def list_uids(self, email_address: str, folder: str = "INBOX") -> list[int]:
        rows = self._tab("fetch", "-u", email_address, "uid", "mailbox", folder, "all")
        return [int(r["uid"]) for r in rows]

    def fetch_message_ids(self, email_address: str, folder: str = "INBOX") -> dict[int, str]:
        """UID -> Message-ID header (without <>; "" if absent), in UID order."""
        rows = self._tab("fetch", "-u", email_address, "uid hdr.message-id", "mailbox", folder, "all")
        return {int(r["uid"]): r.get("hdr.message-id", "").strip().strip("<>") for r in rows}

    def expunge(self, email_address: str, folder: str, uids: Iterable[int]) -> None:
        uid_set = _uid_set(uids)
        if uid_set:
            self.doveadm("expunge", "-u", email_address, "mailbox", folder, "uid", uid_set)

    def add_flags(self, email_address: str, folder: str, uids: Iterable[int], *flags: str) -> None:
        uid_set = _uid_set(uids)
        if uid_set and flags:
            self.doveadm(
                "flags", "add", "-u", email_address, " ".join(flags), "mailbox", folder, "uid", uid_set
            )

    def reset_uidvalidity(self, email_address: str, folder: str = "INBOX", *, renumber: bool = True) -> int:
        """Give ``folder`` a new UIDVALIDITY, keeping its messages; returns the new value.

        With ``renumber`` (default) the messages are also moved out and back, so they
        get new UIDs, as after a server-side rebuild. Flags are kept.
        """
        old = self.uidvalidity(email_address, folder)
        tmp = f"mailroom-uidreset-{os.getpid()}-{time.monotonic_ns()}"
        if renumber:
            self.create_folder(email_address, tmp)
            self.doveadm("move", "-u", email_address, tmp, "mailbox", folder, "all")
        new = max(old + 1, int(time.time()))
        self.doveadm("mailbox", "update", "-u", email_address, "--uid-validity", str(new), folder)
        if renumber:
            self.doveadm("move", "-u", email_address, folder, "mailbox", tmp, "all")
            self.doveadm("mailbox", "delete", "-u", email_address, tmp)
        actual = self.uidvalidity(email_address, folder)
        if actual == old:
            raise ServerError(f"UIDVALIDITY of {folder} did not change ({old})")
        return actual


# --------------------------------------------------------------------------- Postfix


@dataclass(frozen=True)
class DeliveryStatus:
    """One ``status=`` line of the Postfix log for a recipient."""

    recipient: str
    status: str  # sent, bounced, deferred, expired
    relay: str
    line: str


_STATUS_RE = re.compile(r"\bto=<(?P<to>[^>]*)>.*?\brelay=(?P<relay>\S+?),.*?\bstatus=(?P<status>\w+)")


class Postfix(_Daemon):
    """A private Postfix instance under ``run_dir/postfix`` (needs root to start).

    * ``smtp_port``: MX-like inbound, no AUTH; accepts mail for the virtual domains and
      relay domains only.
    * ``submission_port``: SASL AUTH via Dovecot's auth service (PLAIN/LOGIN, allowed
      without TLS; STARTTLS offered), authenticated clients may send anywhere routable.
    * Virtual domains (``domains``) are delivered to Dovecot over LMTP/TCP; recipients
      must be Dovecot users (unknown ones get 550 at RCPT time).
    * Relay domains (``relay()``) go through ``transport_maps`` to an LMTP or SMTP
      endpoint on loopback, e.g. Mailroom's inbound endpoint.
    * Anything else is bounced (``default_transport = error``): no DNS, no traffic off
      the machine.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        dovecot: Dovecot,
        *,
        domains: Sequence[str] = ("company.test", "client.test"),
        relays: Mapping[str, str] | None = None,
        myhostname: str = "mx.mailroom.test",
        host: str = LOOPBACK,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir).absolute()
        self.dovecot = dovecot
        self.host = host
        self.myhostname = myhostname
        self.domains: list[str] = [d.lower() for d in domains]
        # relay domain -> postfix nexthop, e.g. "lmtp:inet:127.0.0.1:2500"
        self.relays: dict[str, str] = dict(relays or {})
        self.rejects: dict[str, str] = {}
        self.dir = self.run_dir / "postfix"
        self.config_dir = self.dir / "etc"
        self.queue_dir = self.dir / "queue"
        self._short_queue: Path | None = None
        self.data_dir = self.dir / "data"
        self.maillog_path = self.dir / "maillog"
        self.smtp_port = 0
        self.submission_port = 0
        self._tables_lock = threading.Lock()
        dovecot.on_user_added(self._user_added)

    def __repr__(self) -> str:
        return f"<Postfix {self.host} smtp={self.smtp_port} submission={self.submission_port}>"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> Self:
        if self.running:
            return self
        if missing := missing_server_binaries(dovecot=False):
            raise ServersNotInstalled(f"missing {', '.join(missing)}: {INSTALL_HINT}")
        if os.geteuid() != 0:
            raise ServerError(
                "a private Postfix instance must be started as root: its master process "
                "binds and then drops privileges to the 'postfix' user itself"
            )
        if not self.dovecot.running:
            raise ServerError("start Dovecot before Postfix (it delivers over LMTP and authenticates via it)")
        try:
            owner = pwd.getpwnam("postfix")
        except KeyError:
            raise ServersNotInstalled(f"no 'postfix' user: {INSTALL_HINT}") from None
        _check_traversable(self.run_dir, "Postfix's unprivileged daemons (user 'postfix')")
        self._make_dirs(owner.pw_uid, owner.pw_gid)
        ensure_tls_cert(self.run_dir / "tls")
        master = os.fspath(_postfix_daemon_dir() / "master")
        deadline = time.monotonic() + timeout
        last_error = ""
        for _attempt in range(3):
            self.smtp_port, self.submission_port = _free_ports(2, self.host)
            self._write_config()
            log_start = self.maillog_path.stat().st_size if self.maillog_path.exists() else 0
            self._spawn([master, "-c", os.fspath(self.config_dir), "-s"], self.dir / "master.out")
            while time.monotonic() < deadline:
                if not self.running:
                    break
                if _port_open(self.host, self.smtp_port) and _port_open(self.host, self.submission_port):
                    return self
                time.sleep(0.02)
            last_error = self._log_since(log_start) + _tail(self.dir / "master.out", 10)
            self._terminate()
            if "Address already in use" not in last_error:
                break
        self.stop()
        raise ServerError(f"Postfix did not start (log {self.maillog_path}):\n{last_error}")

    def reload(self, timeout: float = 3.0) -> None:
        """``postfix reload``: re-read config and tables; waits (up to ``timeout``) for
        the old daemons to go, so the next mail is handled with the new settings.

        Daemons busy with an open connection only exit after it closes.
        """
        if not self.running or self._proc is None:
            return
        old = _children(self._proc.pid)
        self._proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(process_alive(pid) for pid in old):
            time.sleep(0.01)

    def stop(self) -> None:
        self._terminate()
        if self._short_queue is not None:
            with contextlib.suppress(OSError):
                (self.dir / "queue").unlink()
            shutil.rmtree(self._short_queue, ignore_errors=True)
            self._short_queue = None
            self.queue_dir = self.dir / "queue"

    def _make_dirs(self, uid: int, gid: int) -> None:
        self.run_dir.chmod(0o755)
        self.dir.mkdir(parents=True, exist_ok=True)
        default_queue = self.dir / "queue"
        if len(str(default_queue)) > _MAX_BASE_DIR_LEN and self._short_queue is None:
            # Postfix programs log via the absolute socket path queue/public/postlog,
            # limited to 107 bytes: use a short temp queue dir (removed at stop).
            self._short_queue = self.queue_dir = Path(tempfile.mkdtemp(prefix="mr-postfix-"))
            if default_queue.is_symlink():
                default_queue.unlink()
            elif default_queue.exists():
                shutil.rmtree(default_queue)
            default_queue.symlink_to(self._short_queue)
        for d in (self.dir, self.config_dir, self.queue_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, 0, 0)
            d.chmod(0o755)
        self.data_dir.mkdir(exist_ok=True)
        os.chown(self.data_dir, uid, gid)
        self.data_dir.chmod(0o700)
        try:
            postdrop_gid = __import__("grp").getgrnam("postdrop").gr_gid
        except KeyError:
            postdrop_gid = gid
        # As in postfix-files: (name, owner uid, gid, mode)
        for name, duid, dgid, mode in [
            *[(n, uid, 0, 0o700) for n in (
                "active", "bounce", "corrupt", "defer", "deferred", "flush",
                "hold", "incoming", "private", "saved", "trace",
            )],
            ("maildrop", uid, postdrop_gid, 0o730),
            ("public", uid, postdrop_gid, 0o710),
            ("pid", 0, 0, 0o755),
        ]:  # fmt: skip
            d = self.queue_dir / name
            d.mkdir(exist_ok=True)
            os.chown(d, duid, dgid)
            d.chmod(mode)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.maillog_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ config

    def _write_config(self) -> None:
        etc = self.config_dir
        cert, key = self.run_dir / "tls" / "cert.pem", self.run_dir / "tls" / "key.pem"
        dc = self.dovecot
        main_cf = f"""\
# Generated by mailroom.testing.servers.Postfix: a private test instance. Do not edit.
compatibility_level = 3.6
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
mail_owner = postfix
setgid_group = postdrop
syslog_name = mailroom-postfix
maillog_file = {self.maillog_path}
maillog_file_prefixes = {self.run_dir}

myhostname = {self.myhostname}
mydomain = mailroom.test
myorigin = $myhostname
mydestination =
local_transport = error:5.1.1 no local delivery in this instance
alias_maps =
alias_database =
local_recipient_maps =
inet_interfaces = {self.host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_bind_address = {self.host}
lmtp_bind_address = {self.host}

# Loopback only: never ask DNS, never route anywhere but the maps below.
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
smtpd_peername_lookup = no
default_transport = error:5.7.1 delivery outside the test domains is disabled
relay_transport = error:5.7.1 relay domain without a transport_maps entry

# Hosted mailboxes: delivered to Dovecot over LMTP (TCP).
virtual_mailbox_domains = hash:{etc}/virtual_domains
virtual_mailbox_maps = hash:{etc}/virtual_mailboxes
virtual_transport = lmtp:inet:{dc.host}:{dc.lmtp_port}

# Relay domains: handed to another SMTP/LMTP endpoint (e.g. Mailroom's inbound).
relay_domains = hash:{etc}/relay_domains
relay_recipient_maps =
transport_maps = hash:{etc}/transport

smtpd_banner = $myhostname ESMTP
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions = check_recipient_access hash:{etc}/recipient_access
smtpd_reject_unlisted_recipient = yes
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_client_connection_rate_limit = 0
in_flow_delay = 0

smtpd_tls_chain_files = {key}, {cert}
smtpd_tls_security_level = may
smtpd_tls_auth_only = no
smtp_tls_security_level = none
lmtp_tls_security_level = none
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:{dc.host}:{dc.auth_port}
smtpd_sasl_auth_enable = no
smtpd_sasl_authenticated_header = no

# Quick retries so outage tests recover fast; short lifetimes so nothing lingers.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 5s
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
delay_warning_time = 0
smtp_connect_timeout = 5s
lmtp_connect_timeout = 5s
notify_classes =
biff = no
append_dot_mydomain = no
message_size_limit = 52428800
mailbox_size_limit = 0
"""
        sub = self.submission_port
        master_cf = f"""\
# Generated by mailroom.testing.servers.Postfix. chroot (5th column) is off everywhere.
# smtpd: max_use=1, a fresh process per connection, so changed lookup tables (reject(),
# new users) apply to the very next connection (an idle smtpd would serve one more
# connection with the old tables before noticing).
# service type  private unpriv  chroot  wakeup  maxproc command
{self.host}:{self.smtp_port} inet n - n - - smtpd
  -o max_use=1
{self.host}:{sub} inet n - n - - smtpd
  -o max_use=1
  -o syslog_name=mailroom-postfix/submission
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_security_level=may
  -o {{smtpd_relay_restrictions = permit_sasl_authenticated, reject}}
  -o {{smtpd_recipient_restrictions = check_recipient_access hash:{etc}/recipient_access, permit_sasl_authenticated, reject}}
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""
        _atomic_write(etc / "main.cf", main_cf, backdate=True)
        _atomic_write(etc / "master.cf", master_cf, backdate=True)
        self._write_tables()

    def _postmap(self, name: str, lines: Iterable[str]) -> None:
        path = self.config_dir / name
        _atomic_write(path, "".join(f"{line}\n" for line in lines), backdate=True)
        cp = subprocess.run(  # noqa: S603
            [_require("postmap"), "-c", os.fspath(self.config_dir), f"hash:{path}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if cp.returncode != 0:
            raise ServerError(f"postmap {path} failed: {cp.stderr.strip()}")

    def _write_tables(self, only: str | None = None) -> None:
        tables: dict[str, Callable[[], Iterator[str]]] = {
            "virtual_domains": lambda: (f"{d} OK" for d in self.domains),
            "virtual_mailboxes": lambda: (
                f"{u} OK" for u in sorted(self.dovecot.users) if u.rpartition("@")[2] in self.domains
            ),
            "relay_domains": lambda: (f"{d} OK" for d in self.relays),
            "transport": lambda: (f"{d} {nexthop}" for d, nexthop in self.relays.items()),
            "recipient_access": lambda: (f"{a} {action}" for a, action in self.rejects.items()),
        }
        with self._tables_lock:
            if not self.config_dir.exists():
                return
            for name, lines in tables.items():
                if only is None or name == only:
                    self._postmap(name, lines())

    def _user_added(self, email_address: str) -> None:
        if (self.config_dir / "main.cf").exists():
            self._write_tables("virtual_mailboxes")

    def add_domain(self, domain: str) -> None:
        """Host another domain's mailboxes in Dovecot."""
        if domain.lower() not in self.domains:
            self.domains.append(domain.lower())
        self._write_tables("virtual_domains")
        self._write_tables("virtual_mailboxes")
        self.reload()

    def relay(
        self, domain: str, port: int, *, protocol: Literal["lmtp", "smtp"] = "lmtp", host: str = LOOPBACK
    ) -> None:
        """Route ``domain`` (a relay domain) to ``protocol://host:port`` via transport_maps.

        Works before and after start; running daemons pick up the new tables.
        """
        _check_no_control(domain, "domain")
        if ipaddress.ip_address(host).is_loopback is False:
            raise ValueError("test Postfix only relays to loopback addresses")
        nexthop = f"lmtp:inet:{host}:{port}" if protocol == "lmtp" else f"smtp:[{host}]:{port}"
        self.relays[domain.lower()] = nexthop
        self._write_tables("relay_domains")
        self._write_tables("transport")
        self.reload()

    def reject(
        self, address: str, code: int = 550, text: str = "5.1.1 Recipient rejected (test outage)"
    ) -> None:
        """Refuse RCPT TO ``address`` (or a whole domain) with ``code`` until :meth:`unreject`."""
        _check_no_control(address, "address or domain")
        if not (400 <= code <= 599):
            raise ValueError("code must be a 4xx or 5xx SMTP reply code")
        self.rejects[address.lower()] = f"{code} {text}"
        self._write_tables("recipient_access")

    def unreject(self, address: str | None = None) -> None:
        """Accept ``address`` again (all rejected addresses if None)."""
        if address is None:
            self.rejects.clear()
        else:
            self.rejects.pop(address.lower(), None)
        self._write_tables("recipient_access")

    # ------------------------------------------------------------------ queue & log

    def flush(self) -> None:
        """Attempt delivery of all queued mail now (``postqueue -f``)."""
        subprocess.run(  # noqa: S603
            [_require("postqueue"), "-c", os.fspath(self.config_dir), "-f"], capture_output=True, check=True
        )

    def queue(self) -> list[dict[str, object]]:
        """The queue as ``postqueue -j`` records (queue_name, queue_id, sender, recipients...)."""
        cp = subprocess.run(  # noqa: S603
            [_require("postqueue"), "-c", os.fspath(self.config_dir), "-j"],
            capture_output=True,
            text=True,
            check=True,
        )
        return [json.loads(line) for line in cp.stdout.splitlines() if line.strip()]

    def wait_for_queue(self, queue_name: str, timeout: float = 60.0) -> list[dict[str, object]]:
        """Wait until some queued message is in ``queue_name`` ("deferred", "active"...); its records.

        The delivery agent logs ``status=deferred`` before the queue manager moves the file to
        the deferred queue, so the queue is polled rather than read once after the log line.
        """
        deadline = time.monotonic() + timeout
        while True:
            q = self.queue()
            found = [rec for rec in q if rec.get("queue_name") == queue_name]
            if found:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing in Postfix's {queue_name} queue after {timeout}s: {q}")
            time.sleep(0.05)

    def wait_for_empty_queue(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            q = self.queue()
            if not q:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Postfix queue not empty after {timeout}s: {q}")
            time.sleep(0.05)

    def log_position(self) -> int:
        """Current end of the mail log; pass as ``since`` to :meth:`wait_for_delivery`."""
        try:
            return self.maillog_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_lines(self, since: int = 0) -> list[str]:
        try:
            with open(self.maillog_path, "rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def wait_for_delivery(
        self,
        recipient: str,
        *,
        since: int = 0,
        timeout: float = 10.0,
        statuses: Sequence[str] = ("sent", "bounced", "expired"),
    ) -> DeliveryStatus:
        """Wait for a ``to=<recipient> ... status=S`` log line (S in ``statuses``) after ``since``.

        Deferrals are skipped by default (Postfix retries); pass ``statuses`` including
        "deferred" to see them.
        """
        deadline = time.monotonic() + timeout
        wanted = recipient.lower()
        while True:
            for line in self.log_lines(since):
                m = _STATUS_RE.search(line)
                if m and m["to"].lower() == wanted and m["status"] in statuses:
                    return DeliveryStatus(m["to"], m["status"], m["relay"], line)
            if time.monotonic() > deadline:
                tail = "\n".join(self.log_lines(since)[-20:])
                raise TimeoutError(f"no delivery status for {recipient} within {timeout}s; log:\n{tail}")
            time.sleep(0.05)
