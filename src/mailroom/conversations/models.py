from __future__ import annotations

from django.conf import settings
from django.db import models


class Thread(models.Model):
    # team, deal: no index of their own; thread_team_recent / thread_deal_recent lead with them.
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="threads", db_index=False)
    subject = models.CharField(max_length=1000, blank=True)
    # Indexed by thread_team_subject (every lookup is per team).
    normalized_subject = models.CharField(max_length=1000, blank=True)
    first_message_at = models.DateTimeField(null=True, blank=True)
    last_message_at = models.DateTimeField(null=True, blank=True)
    message_count = models.PositiveIntegerField(default=0)
    deal = models.ForeignKey(
        "crm.Deal", null=True, blank=True, on_delete=models.SET_NULL, related_name="threads", db_index=False
    )
    created_at = models.DateTimeField(auto_now_add=True)

    # --- linking (issue 4) ---
    class Verification(models.TextChoices):
        VERIFIED = "", "Verified"
        UNVERIFIED = "unverified", "Unverified: claims to reply to another thread"
        REJECTED = "rejected", "Rejected by a user"

    class DealSource(models.TextChoices):
        NONE = "", "None"
        AUTO = "auto", "Linked by the rules"
        USER = "user", "Chosen by a user (sticks)"

    # Canonical addresses of every from/to/cc of the thread's messages (anti-spoofing, subject fallback).
    participants = models.JSONField(default=list, blank=True)
    verification = models.CharField(max_length=12, choices=Verification.choices, default="", blank=True)
    claimed_thread = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="unverified_claims"
    )
    deal_source = models.CharField(max_length=4, choices=DealSource.choices, default="", blank=True)
    # Open deals the rules could not choose between (the user picks one via the API).
    deal_candidates = models.JSONField(default=list, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["team", "-last_message_at"], name="thread_team_recent"),
            models.Index(fields=["team", "normalized_subject", "-last_message_at"], name="thread_team_subject"),
            models.Index(fields=["deal", "-last_message_at"], name="thread_deal_recent"),
        ]

    def __str__(self) -> str:
        return self.subject or f"thread {self.pk}"


class Message(models.Model):
    """One email, however many copies of it we saw (each copy is a Source)."""

    class State(models.TextChoices):
        STORED = "stored", "Stored (raw + headers)"
        PARSED = "parsed", "Parsed"
        LINKED = "linked", "Linked (threaded, on cards)"
        QUARANTINED = "quarantined", "Quarantined"

    class Direction(models.TextChoices):
        INCOMING = "incoming", "Incoming"
        OUTGOING = "outgoing", "Outgoing"

    # No index of its own: message_team_mid / message_team_date lead with it.
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="messages", db_index=False)
    message_id = models.TextField()
    message_id_hash = models.CharField(max_length=64)  # sha256 hex of message_id (indexable)
    message_id_synthesised = models.BooleanField(default=False)
    content_hash = models.CharField(max_length=64)
    size = models.PositiveIntegerField(default=0)

    # From the header block (import path).
    subject = models.TextField(blank=True)
    from_address = models.CharField(max_length=320, blank=True)
    from_name = models.CharField(max_length=300, blank=True)
    date = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField()  # first time we stored it
    in_reply_to = models.JSONField(default=list)
    references = models.JSONField(default=list)
    direction = models.CharField(max_length=10, choices=Direction.choices, default=Direction.INCOMING)

    # No index of its own: message_thread_date (thread, date) serves every lookup by thread.
    thread = models.ForeignKey(
        Thread, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages", db_index=False
    )

    # Pipeline.
    state = models.CharField(max_length=12, choices=State.choices, default=State.STORED)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    quarantined_at = models.DateTimeField(null=True, blank=True)
    # Live mail (the priority lane, conversations/pipeline.py): stored by a small fetch of new mail
    # (after IDLE or a poll), the relay endpoint or our outbox, not by a backlog import. Parsed
    # before the backlog, and linked before it where no pending message can change its threading.
    live = models.BooleanField(default=False)
    # subject_key(subject), written when stored: the lane looks for pending messages with a
    # subject a live message could be threaded by (an index of pending rows only).
    subject_key = models.CharField(max_length=16, blank=True, default="")

    # From the full parse (parsing package); the bodies are in MessageBody.
    is_auto_reply = models.BooleanField(default=False)
    is_bulk = models.BooleanField(default=False)
    bounce = models.JSONField(null=True, blank=True)
    auth = models.JSONField(null=True, blank=True)
    parse_errors = models.JSONField(default=list)
    has_attachments = models.BooleanField(default=False)
    # Headers routing needs beyond the threading ones: thread_index, thread_topic, gm_thread_id,
    # list_id, auto_submitted, ... (parsing.mime.RoutingHeaders as a dict).
    routing_headers = models.JSONField(default=dict)

    # Routing decision (which rules fired, and why).
    routing = models.JSONField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["team", "message_id_hash", "content_hash"], name="uniq_message_identity_per_team"
            )
        ]
        indexes = [
            models.Index(fields=["team", "message_id_hash"], name="message_team_mid"),
            models.Index(fields=["thread", "date"], name="message_thread_date"),
            models.Index(fields=["team", "-date", "-id"], name="message_team_date"),
            models.Index(fields=["state", "id"], name="message_state"),
            # The API's count of a team's linked messages from the index alone (polled by clients
            # during an import: it read every row, 13 of 24 ms a request at 5,000 messages).
            models.Index(fields=["team", "state"], name="message_team_state"),
            # Linking takes parsed messages oldest first: without this, every batch read the date of
            # every parsed message (whole rows) to sort them. Only parsed rows are in it.
            models.Index(
                fields=["date", "id"], name="message_parsed_date", condition=models.Q(state="parsed")
            ),
            # The priority lane: the live messages waiting to be parsed, and to be linked (few rows).
            models.Index(
                fields=["id"], name="message_live_stored", condition=models.Q(state="stored", live=True)
            ),
            models.Index(
                fields=["date", "id"], name="message_live_parsed", condition=models.Q(state="parsed", live=True)
            ),
            # The lane's check for pending messages of a team with a live message's subject.
            models.Index(
                fields=["team", "subject_key"], name="message_pending_subject",
                condition=models.Q(state__in=["stored", "parsed"]),
            ),
        ]

    def __str__(self) -> str:
        return f"<{self.message_id}>"


def subject_key(subject: str) -> str:
    """A short key of the normalised subject (routing.subjects.normalize_subject: what threading by
    subject compares), "" for none."""
    import hashlib

    from mailroom.routing.subjects import normalize_subject

    norm = normalize_subject(subject)
    return hashlib.sha256(norm.encode("utf-8", "surrogateescape")).hexdigest()[:16] if norm else ""


class MessageBody(models.Model):
    """The bodies from the full parse, in a table of their own: a ``Message`` row stays narrow, so
    linking, which reads and rewrites every message's row, does not read and rewrite its bodies too
    (they took the row to several pages: on bench/import_bench.py, reading and rewriting message rows
    was a third of linking). A message without a parse has no row here."""

    message = models.OneToOneField(Message, primary_key=True, on_delete=models.CASCADE, related_name="body")
    text = models.TextField(blank=True)
    html = models.TextField(blank=True)  # sanitised
    reply_text = models.TextField(blank=True)  # the new text of a reply, without the quoted history

    def __str__(self) -> str:
        return f"body of message {self.message_id}"


def message_body(message_pk: int) -> MessageBody:
    """A message's bodies; empty ones for a message not parsed yet."""
    return MessageBody.objects.filter(message_id=message_pk).first() or MessageBody(message_id=message_pk)


def raw_bytes(data: bytes | memoryview | None, blob: str) -> bytes:
    """The bytes of a raw row, wherever they are kept."""
    if blob:
        from mailroom.core.blobs import blob_store

        return blob_store().read(blob)
    return bytes(data or b"")


def raw_refs_for(message_ids: list[int]) -> dict[int, bytes | str]:
    """Where the raw bytes of several messages are, by message id: the bytes themselves (raw store
    "database") or the reference into a segment file (raw store "files"), which the parse workers
    read themselves rather than have the bytes sent over to them. Messages without a raw row are
    absent."""
    from django.db import connection

    if connection.vendor == "postgresql":
        return _pg_raw_refs_for(message_ids)
    out: dict[int, bytes | str] = {}
    for i in range(0, len(message_ids), 900):  # SQLite's bound-parameter limit
        for pk, data, blob in MessageRaw.objects.filter(message_id__in=message_ids[i : i + 900]).values_list(
            "message_id", "data", "blob"
        ):
            out[pk] = blob or bytes(data or b"")
    return out


def _pg_raw_refs_for(message_ids: list[int], chunk: int = 100) -> dict[int, bytes | str]:
    """``raw_refs_for`` on PostgreSQL: binary results, a chunk of ``chunk`` messages a query.

    Django's cursor binds client-side, which allows text results only: bytea comes as hex, twice
    its size, which the server encodes and the driver decodes. A plain psycopg cursor on the same
    connection (and transaction) takes them in binary. Measured reading 2,000 bench messages (130 MB)
    400 at a time: 0.06-0.09 s of client CPU and 0.09-0.15 s of the server's, against 0.31-0.32 and
    0.26-0.32 s in text. The chunks bound the driver's result buffer (the whole batch's bytes, hex,
    were in one) to a few MB."""
    import psycopg
    from django.db import connection

    table = connection.ops.quote_name(MessageRaw._meta.db_table)
    sql = f"SELECT message_id, data, blob FROM {table} WHERE message_id = ANY(%s)"  # noqa: S608 - model metadata
    out: dict[int, bytes | str] = {}
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cur:
        for i in range(0, len(message_ids), chunk):
            cur.execute(sql, [message_ids[i : i + chunk]], binary=True)
            for pk, data, blob in cur.fetchall():
                out[pk] = blob or bytes(data or b"")
    return out


class MessageRaw(models.Model):
    """The raw bytes of a message, stored once, durably, before anything is acknowledged: in ``data``
    (raw store "database") or in a segment file that ``blob`` points at (raw store "files")."""

    message = models.OneToOneField(Message, primary_key=True, on_delete=models.CASCADE, related_name="raw")
    data = models.BinaryField(null=True, blank=True)
    blob = models.CharField(max_length=200, blank=True)  # "<segment>:<offset>:<length>"

    def __str__(self) -> str:
        return f"raw of message {self.message_id}"

    def read(self) -> bytes:
        return raw_bytes(self.data, self.blob)


class Source(models.Model):
    """Where we saw a message: an IMAP folder uid, the relay endpoint, or our own outbox."""

    class Kind(models.TextChoices):
        IMAP = "imap", "IMAP"
        LMTP = "lmtp", "Inbound SMTP/LMTP"
        OUTBOX = "outbox", "Sent from Mailroom"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="sources")
    mailbox = models.ForeignKey("mailboxes.Mailbox", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    folder = models.ForeignKey(
        "mailboxes.Folder", null=True, blank=True, on_delete=models.CASCADE, related_name="sources"
    )
    uidvalidity = models.BigIntegerField(null=True, blank=True)
    uid = models.BigIntegerField(null=True, blank=True)
    # Natural identity for non-IMAP sources (e.g. "lmtp:<recipient>:<content hash>", "outbox:<id>").
    key = models.CharField(max_length=300, null=True, blank=True, unique=True)
    internal_date = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["folder", "uidvalidity", "uid"],
                condition=models.Q(kind="imap"),
                name="uniq_imap_source",
            )
        ]
        # "Is this message in that mailbox?" (the API's mailbox filter, for every listed or counted
        # message) answered from the index alone: with message_id only, each probe read the row.
        indexes = [models.Index(fields=["message", "mailbox"], name="source_message_mailbox")]

    def __str__(self) -> str:
        return f"{self.kind} source of message {self.message_id}"


class Participant(models.Model):
    class Role(models.TextChoices):
        FROM = "from", "From"
        SENDER = "sender", "Sender"
        REPLY_TO = "reply_to", "Reply-To"
        TO = "to", "To"
        CC = "cc", "Cc"
        BCC = "bcc", "Bcc"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="participants")
    role = models.CharField(max_length=10, choices=Role.choices)
    address = models.CharField(max_length=320, db_index=True)
    name = models.CharField(max_length=300, blank=True)
    contact = models.ForeignKey(
        "crm.Contact", null=True, blank=True, on_delete=models.SET_NULL, related_name="participations"
    )

    class Meta:
        indexes = [models.Index(fields=["contact", "message"], name="participant_contact_message")]

    def __str__(self) -> str:
        return f"{self.role}: {self.address}"


class Attachment(models.Model):
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attachments")
    filename = models.CharField(max_length=500, blank=True)
    content_type = models.CharField(max_length=200)
    size = models.PositiveIntegerField(default=0)
    content_id = models.CharField(max_length=500, blank=True)
    inline = models.BooleanField(default=False)
    part_path = models.CharField(max_length=200)  # where in the MIME tree, to re-extract from the raw bytes

    def __str__(self) -> str:
        return self.filename or f"attachment {self.pk}"


# --- threading and linking (issue 4) -------------------------------------------------------------------
class MessageKey(models.Model):
    """Threading evidence a message carries, indexed for lookup from other messages: the Message-IDs it
    references (``r:<sha256>``), its Outlook conversation (``ti:<hex>``), its Gmail thread (``gm:<id>``).
    The thread is the message's current thread, so merges and splits need no rewriting here."""

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="+")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="keys")
    key = models.CharField(max_length=80)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "key"], name="uniq_message_key")]
        indexes = [models.Index(fields=["team", "key"], name="message_key_lookup")]

    def __str__(self) -> str:
        return f"{self.message_id}: {self.key}"


class ThreadAlias(models.Model):
    """A merged thread: references to the absorbed thread (our signed Message-IDs, links) resolve to the
    survivor, so later replies to either branch follow the merge."""

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="+")
    absorbed_id = models.BigIntegerField(unique=True)
    survivor = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="aliases")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"thread {self.absorbed_id} -> {self.survivor_id}"


class MessagePlacement(models.Model):
    """A user's decision on where a message belongs (split, merge, accepted claim). Routing replays keep it."""

    class Reason(models.TextChoices):
        SPLIT = "split", "Split out"
        MERGE = "merge", "Merged"
        ACCEPTED = "accepted", "Unverified reply accepted"

    message = models.OneToOneField(Message, primary_key=True, on_delete=models.CASCADE, related_name="placement")
    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="placements")
    reason = models.CharField(max_length=10, choices=Reason.choices)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"message {self.message_id} -> thread {self.thread_id} ({self.reason})"


class MessageContact(models.Model):
    """One row per (contact, message): the contact (and company) timelines, each message once,
    answered from one index range (contact, date)."""

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="+")
    contact = models.ForeignKey("crm.Contact", on_delete=models.CASCADE, related_name="message_links")
    company = models.ForeignKey(
        "crm.Company", null=True, blank=True, on_delete=models.SET_NULL, related_name="message_links"
    )
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="contact_links")
    date = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["contact", "message"], name="uniq_message_contact")]
        indexes = [
            models.Index(fields=["contact", "-date", "-message"], name="message_contact_timeline"),
            models.Index(fields=["company", "-date", "-message"], name="message_company_timeline"),
        ]

    def __str__(self) -> str:
        return f"contact {self.contact_id} <- message {self.message_id}"
