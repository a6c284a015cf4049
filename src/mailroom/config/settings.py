"""Django settings, read from the environment.

Embedded default: SQLite in WAL mode inside ``MAILROOM_DATA_DIR`` (``./.mailroom``).
Production: ``DATABASE_URL=postgres://...``.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from mailroom.core.keys import create_private_file, load_secret_key, private_dir, tighten, tighten_data_files
from mailroom.outbound.limits import MAX_COMPOSE_REQUEST_BYTES

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("MAILROOM_DATA_DIR", Path.cwd() / ".mailroom")).resolve()


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_int(name: str, default: int, *, minimum: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}")
    return number


DEBUG = _env_bool("MAILROOM_DEBUG", False)
# The data dir holds the database, its WAL, the keys and the raw mail: readable by its owner only
# (0700, files 0600), created so and narrowed at start-up where an older version left them wider.
private_dir(DATA_DIR)
SECRET_KEY = load_secret_key(DATA_DIR)
ALLOWED_HOSTS = [h for h in os.environ.get("MAILROOM_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("MAILROOM_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

# Served over https (directly or behind a proxy that sets X-Forwarded-Proto): secure cookies, HSTS, a
# redirect from http, and start-up checks (core/checks.py) that refuse an unsafe deployment.
MAILROOM_HTTPS = _env_bool("MAILROOM_HTTPS", False)
# Behind a reverse proxy: X-Forwarded-Proto says https, and the client's address (for login
# throttling) is the last one the proxy added to X-Forwarded-For. Off: both headers are ignored.
MAILROOM_BEHIND_PROXY = _env_bool("MAILROOM_BEHIND_PROXY", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if MAILROOM_HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("MAILROOM_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("MAILROOM_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = _env_bool("MAILROOM_HSTS_PRELOAD", True)
    SECURE_SSL_REDIRECT = _env_bool("MAILROOM_SSL_REDIRECT", True)
    if MAILROOM_BEHIND_PROXY:
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",  # intcomma: counts grouped as the reader's language writes them
    "ninja",  # its templates and static files: the API docs page is served from here, not a CDN
    "axes",
    "mailroom.core",
    "mailroom.accounts",
    "mailroom.crm",
    "mailroom.mailboxes",
    "mailroom.conversations",
    "mailroom.ingest",
    "mailroom.outbound",
    "mailroom.events",
    "mailroom.webhooks",
    "mailroom.web",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a lock-out into its answer (mailroom.web.lockout)
]

# Password logins (the web login, the admin, any API login calling authenticate(request=...)) are
# throttled by django-axes: 5 failures for one user name from one address lock that pair out for
# 15 minutes (the right password too); a success resets the count. Attempts live in the database.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "mailroom.web.lockout.client_ip"
AXES_USERNAME_FORM_FIELD = "username"
AXES_USERNAME_CALLABLE = "mailroom.web.lockout.client_username"
AXES_LOCKOUT_CALLABLE = "mailroom.web.lockout.lockout_response"
AXES_HTTP_RESPONSE_CODE = 429
AXES_VERBOSE = False

ROOT_URLCONF = "mailroom.config.urls"
WSGI_APPLICATION = "mailroom.config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Django's SQLite backend with a write lock taken as soon as it is free (core/sqlite_backend).
SQLITE_ENGINE = "mailroom.core.sqlite_backend"
_database_url = os.environ.get("DATABASE_URL", "").strip()
if _database_url:
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=60)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        DATABASES["default"]["ENGINE"] = SQLITE_ENGINE
        DATABASES["default"].setdefault("OPTIONS", {})
else:
    DATABASES = {
        "default": {
            "ENGINE": SQLITE_ENGINE,
            "NAME": str(DATA_DIR / "mailroom.sqlite3"),
            "OPTIONS": {},
        }
    }
if DATABASES["default"]["ENGINE"] == SQLITE_ENGINE:
    # WAL lets readers (API) run beside the writer (sync); synchronous=FULL makes a commit durable
    # before we acknowledge anything (IMAP cursor, LMTP 250); IMMEDIATE avoids upgrade deadlocks.
    # 64 KiB pages (effective when the database file is created): raw messages are large blobs, which
    # SQLite stores as chains of overflow pages; big pages write them about twice as fast as 4 KiB.
    # The page cache of a connection: MAILROOM_SQLITE_CACHE_KIB (core/sqlite_backend).
    DATABASES["default"]["OPTIONS"].update(
        {
            "init_command": (
                "PRAGMA page_size=65536; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
                "PRAGMA foreign_keys=ON; PRAGMA busy_timeout=30000; "
                "PRAGMA journal_size_limit=134217728;"
            ),
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        }
    )
    # A file (not :memory:) so that subprocesses in end-to-end tests (kill -9 runs) share it.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test-mailroom.sqlite3")}

# Raw message bytes: "files" (append-only segment files in MAILROOM_BLOB_DIR, written once with one
# fdatasync per batch; the embedded default) or "database" (a blob column: what machines sharing one
# PostgreSQL need until an object store exists). See docs/adr/0004-raw-bytes-in-segment-files.md.
_SQLITE = DATABASES["default"]["ENGINE"] == SQLITE_ENGINE
# SQLite's page cache per connection, in KiB. Every thread (web requests, import, engine, outbox,
# webhooks) has a connection of its own, each cache fills as the tables grow, and the operating
# system caches the file anyway: 2 MiB (8 MiB took `mailroom serve` from 248 to 284 MB at 20,000
# messages and to 320 MB at 50,000, bench/import_bench.py). The pipeline's processes, whose linking
# reads the same pages again and again, take MAILROOM_SQLITE_PIPELINE_CACHE_KIB (8 MiB: linking was
# a tenth slower with 2).
MAILROOM_SQLITE_CACHE_KIB = _env_int("MAILROOM_SQLITE_CACHE_KIB", 2048, minimum=64)
MAILROOM_SQLITE_PIPELINE_CACHE_KIB = _env_int("MAILROOM_SQLITE_PIPELINE_CACHE_KIB", 8192, minimum=64)
MAILROOM_RAW_STORE = os.environ.get("MAILROOM_RAW_STORE", "files" if _SQLITE else "database")
if MAILROOM_RAW_STORE not in ("files", "database"):
    raise ImproperlyConfigured(f"MAILROOM_RAW_STORE must be files or database, not {MAILROOM_RAW_STORE!r}")
MAILROOM_BLOB_DIR = Path(os.environ.get("MAILROOM_BLOB_DIR", DATA_DIR / "blobs")).resolve()
if _SQLITE and DATABASES["default"]["NAME"] not in ("", ":memory:") and "mode=memory" not in str(DATABASES["default"]["NAME"]):
    # Created here with mode 0600 before SQLite opens it: SQLite gives the -wal and -shm files the
    # database file's mode (a file SQLite created itself would be 0644 under the usual umask).
    _db_path = Path(DATABASES["default"]["NAME"])
    _db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    create_private_file(_db_path)
    for _suffix in ("", "-wal", "-shm"):
        tighten(Path(f"{_db_path}{_suffix}"), 0o600)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
]

LANGUAGE_CODE = os.environ.get("MAILROOM_LANGUAGE", "en")
LANGUAGES = [("en", "English"), ("ru", "Русский")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(mode=0o700, parents=True, exist_ok=True)
tighten_data_files([DATA_DIR, STATIC_ROOT, MAILROOM_BLOB_DIR])
WHITENOISE_USE_FINDERS = True  # serve the admin's static files without a collectstatic step

# The largest request body Django reads: what the largest compose the outbox accepts takes (all its
# attachments as base64 in JSON, outbound/limits.py); Django's 2.5 MB default refused attachments
# above ~1.9 MB. A larger body is a JSON 413 on the API (api/main.py).
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_COMPOSE_REQUEST_BYTES

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"

# --- Mailroom -------------------------------------------------------------------------------------
# AEAD keys for secrets at rest: "kid1:base64key,kid0:base64key" (first one encrypts; all decrypt).
MAILROOM_ENCRYPTION_KEYS = os.environ.get("MAILROOM_ENCRYPTION_KEYS", "")
MAILROOM_KEY_FILE = DATA_DIR / "encryption.keys"
# Signing key for reply tokens and our Message-IDs (HMAC). Defaults to a derivation of SECRET_KEY.
MAILROOM_TOKEN_KEY = os.environ.get("MAILROOM_TOKEN_KEY", "")
# Domain used in Message-IDs when a mailbox has none.
MAILROOM_MESSAGE_ID_DOMAIN = os.environ.get("MAILROOM_MESSAGE_ID_DOMAIN", "mailroom.local")
# Relay domain for reply+<token>@domain (optional).
MAILROOM_RELAY_DOMAIN = os.environ.get("MAILROOM_RELAY_DOMAIN", "")
# Tests and local development only: user-configured URLs (OAuth2 token endpoints) may be plain http to
# loopback. Off in production: https to public addresses only.
MAILROOM_ALLOW_LOOPBACK_HTTP = _env_bool("MAILROOM_ALLOW_LOOPBACK_HTTP", False)
# The server admin's choice (not a team's): mailboxes may turn TLS certificate checks off for hosts
# other than loopback.
MAILROOM_ALLOW_INSECURE_TLS = _env_bool("MAILROOM_ALLOW_INSECURE_TLS", False)
# Relay answers from a deal owner's personal address need DKIM/DMARC or trusted SPF (not just the
# envelope sender). Turn off only on a closed network.
MAILROOM_RELAY_REQUIRE_AUTH = _env_bool("MAILROOM_RELAY_REQUIRE_AUTH", True)
# authserv-ids whose Authentication-Results headers we trust (comma separated).
MAILROOM_TRUSTED_AUTHSERV_IDS = [
    s.strip() for s in os.environ.get("MAILROOM_TRUSTED_AUTHSERV_IDS", "").split(",") if s.strip()
]
# DKIM: Mailroom verifies every message's signatures itself (keys from DNS, through these servers,
# "host" or "host:port", comma separated; empty: the system's resolver). An aligned pass authenticates
# the sender; see docs/architecture.md, "Who sent it".
MAILROOM_DKIM_VERIFY = _env_bool("MAILROOM_DKIM_VERIFY", True)
MAILROOM_DNS_SERVERS = [s.strip() for s in os.environ.get("MAILROOM_DNS_SERVERS", "").split(",") if s.strip()]
MAILROOM_DNS_TIMEOUT = float(os.environ.get("MAILROOM_DNS_TIMEOUT", "3"))
# Relay endpoint quotas (docs/relay.md): messages accepted per relay token and per team in a fixed
# window; past them the endpoint answers 451 4.7.1 and the sending MTA retries in a later window.
# A session that names more than MAILROOM_RELAY_MAX_FAILED_RCPTS unknown/forged/revoked relay
# addresses is closed with 421.
MAILROOM_RELAY_QUOTA_WINDOW_SECONDS = _env_int("MAILROOM_RELAY_QUOTA_WINDOW_SECONDS", 3600, minimum=60)
MAILROOM_RELAY_QUOTA_PER_TOKEN = _env_int("MAILROOM_RELAY_QUOTA_PER_TOKEN", 100, minimum=1)
MAILROOM_RELAY_QUOTA_PER_TEAM = _env_int("MAILROOM_RELAY_QUOTA_PER_TEAM", 2000, minimum=1)
MAILROOM_RELAY_MAX_FAILED_RCPTS = _env_int("MAILROOM_RELAY_MAX_FAILED_RCPTS", 10, minimum=0)
# Outbox: how long a sender holds a claimed row, retry backoff base, SMTP timeout, batch sizes.
MAILROOM_OUTBOX_LEASE_SECONDS = int(os.environ.get("MAILROOM_OUTBOX_LEASE_SECONDS", "300"))
MAILROOM_OUTBOX_RETRY_BASE_SECONDS = float(os.environ.get("MAILROOM_OUTBOX_RETRY_BASE_SECONDS", "30"))
MAILROOM_OUTBOX_SMTP_TIMEOUT = float(os.environ.get("MAILROOM_OUTBOX_SMTP_TIMEOUT", "30"))
MAILROOM_OUTBOX_BATCH = int(os.environ.get("MAILROOM_OUTBOX_BATCH", "500"))
MAILROOM_OUTBOX_RECORD_CHUNK = int(os.environ.get("MAILROOM_OUTBOX_RECORD_CHUNK", "250"))
MAILROOM_OUTBOX_CONNECTIONS = int(os.environ.get("MAILROOM_OUTBOX_CONNECTIONS", "4"))
# Sync engines: how long a mailbox lease lasts without renewal (engines renew every few seconds,
# and every import commit renews it). Past it the mailbox is taken over by another engine and an
# engine that has not heartbeated for as long counts as dead (ingest/leases.py).
MAILROOM_LEASE_SECONDS = _env_int("MAILROOM_LEASE_SECONDS", 60, minimum=2)
# How many of an engine's mailbox runners may sync at once (each holding a database connection
# meanwhile); the others wait in IDLE holding none. Bounds an engine's connections however many
# mailboxes it holds (PostgreSQL's max_connections is 100 by default).
MAILROOM_SYNC_CONCURRENCY = _env_int("MAILROOM_SYNC_CONCURRENCY", 8, minimum=1)
# Webhooks (webhooks/, Standard Webhooks). The retry schedule: seconds before each attempt,
# comma separated (the first is the delay of the first attempt; the spec's default: immediately, 5 s,
# 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h), each delay jittered by up to a fifth; after the
# last the delivery has failed. An endpoint failing without a success for DISABLE_AFTER seconds is
# disabled. ALLOW_HOSTS: host names or addresses (or networks, 10.1.0.0/16) that webhooks may reach
# although they are loopback/private, and over plain http (tests, closed networks); otherwise https to
# public addresses only.
def _schedule(name: str, default: str) -> list[float]:
    raw = os.environ.get(name, "").strip() or default
    try:
        values = [float(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be seconds, comma separated, not {raw!r}") from None
    if not values or any(v < 0 for v in values):
        raise ImproperlyConfigured(f"{name} must be one or more non-negative numbers of seconds")
    return values


MAILROOM_WEBHOOK_RETRY_SCHEDULE = _schedule(
    "MAILROOM_WEBHOOK_RETRY_SCHEDULE", "0,5,300,1800,7200,18000,36000,50400,72000,86400")
MAILROOM_WEBHOOK_DISABLE_AFTER = _env_int("MAILROOM_WEBHOOK_DISABLE_AFTER", 5 * 24 * 3600, minimum=0)
MAILROOM_WEBHOOK_ALLOW_HOSTS = [
    s.strip().lower() for s in os.environ.get("MAILROOM_WEBHOOK_ALLOW_HOSTS", "").split(",") if s.strip()
]
MAILROOM_WEBHOOK_TIMEOUT = float(os.environ.get("MAILROOM_WEBHOOK_TIMEOUT", "10"))
MAILROOM_WEBHOOK_CONCURRENCY = _env_int("MAILROOM_WEBHOOK_CONCURRENCY", 8, minimum=1)
MAILROOM_WEBHOOK_SECRET_OVERLAP = _env_int("MAILROOM_WEBHOOK_SECRET_OVERLAP", 24 * 3600, minimum=0)
MAILROOM_WEBHOOK_LEASE_SECONDS = _env_int("MAILROOM_WEBHOOK_LEASE_SECONDS", 60, minimum=2)
# Task execution: "inline" (embedded, in-process worker threads) or "celery".
MAILROOM_TASKS = os.environ.get("MAILROOM_TASKS", "inline")
# Worker processes for full parsing, beside the process that stores (0: parse in-process). The default
# is one per spare core (at most 4); Celery prefork children always parse in-process.
_parse_processes = os.environ.get("MAILROOM_PARSE_PROCESSES", "auto")
if _parse_processes == "auto":
    # At least one: a worker process is what lets a stuck parse be killed (MAILROOM_PARSE_DEADLINE).
    MAILROOM_PARSE_PROCESSES = max(1, min(4, len(os.sched_getaffinity(0)) - 1))
elif _parse_processes.isdigit():
    MAILROOM_PARSE_PROCESSES = int(_parse_processes)
else:
    raise ImproperlyConfigured(f"MAILROOM_PARSE_PROCESSES must be auto or a number, not {_parse_processes!r}")
# Hard deadline (seconds) for parsing a chunk of messages, or one message alone, in a parse worker:
# past it the worker is killed and the message fails one attempt (quarantined after three). With
# MAILROOM_PARSE_PROCESSES=0, or in a Celery prefork child (which may not start processes; 'mailroom
# worker' uses the threads pool by default), parsing runs in-process and only the parser's own time
# budget, checked between its steps, applies.
MAILROOM_PARSE_DEADLINE = float(os.environ.get("MAILROOM_PARSE_DEADLINE", "30"))
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("MAILROOM_LOG_LEVEL", "WARNING")},
}
