"""The `mailroom` command, end to end against real Dovecot (in-process: main(argv))."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mailroom.accounts.models import ApiToken
from mailroom.cli import main
from mailroom.conversations.models import Message
from mailroom.mailboxes.models import Mailbox
from tests.ingest.helpers import make_mail

pytestmark = pytest.mark.django_db(transaction=True)


def test_user_and_token(capsys: Any) -> None:
    assert main(["user", "create", "anna", "--password", "s3cret-pass", "--team", "Sales", "--email", "a@company.test"]) == 0
    assert capsys.readouterr().out == "created user anna in team 'Sales'\n"
    assert main(["user", "create", "anna", "--password", "x"]) == 1
    assert "user 'anna' already exists" in capsys.readouterr().err
    assert main(["token", "create", "anna"]) == 0
    token = capsys.readouterr().out.strip()
    assert ApiToken.objects.get(token_hash=ApiToken.hash(token)).user.username == "anna"
    assert main(["token", "create", "nobody"]) == 1
    assert "no user 'nobody': create one with 'mailroom user create nobody'" in capsys.readouterr().err


def test_user_create_with_a_non_utf8_argument_is_refused_naming_it(capsys: Any) -> None:
    """A byte that is not UTF-8 on the command line reaches Python as a lone surrogate (surrogateescape):
    an error naming the option, not a traceback, and nothing stored."""
    from django.contrib.auth import get_user_model

    from mailroom.accounts.models import Team

    bad = b"sales\xff".decode("utf-8", "surrogateescape")
    assert main(["user", "create", "anna", "--password", "s3cret-pass", "--team", bad]) == 1
    assert capsys.readouterr().err == (
        "mailroom: team: a lone surrogate (\\ud800-\\udfff) is not text: send valid UTF-8\n"
    )
    assert main(["user", "create", bad, "--password", "s3cret-pass"]) == 1
    assert capsys.readouterr().err.startswith("mailroom: username: a lone surrogate")
    assert not get_user_model().objects.exists()
    assert not Team.objects.exists()


def test_mailbox_add_list_test_sync_remove(mail_user: Any, capsys: Any) -> None:
    user = mail_user()
    user.dovecot.deliver_many(user.email, [make_mail(i) for i in range(4)])
    args = ["mailbox", "add", user.email, "--imap-host", "127.0.0.1", "--imap-port", str(user.dovecot.imap_port),
            "--imap-security", "plain", "--smtp-host", "127.0.0.1", "--smtp-port", "1", "--smtp-security", "plain",
            "--password=wrong-password"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"IMAP: IMAP login to 127.0.0.1:{user.dovecot.imap_port} as '{user.email}' was refused" in err
    assert err.startswith("mailroom: mailbox not added: IMAP: ") and err.count("\n") == 1
    assert err.endswith("; SMTP: SMTP server 127.0.0.1:1 refused the connection: check the port (1). "
                        "(use --no-test to add it anyway)\n")
    assert Mailbox.objects.count() == 0

    args[-1] = f"--password={user.password}"  # "=": a generated password may begin with "-"
    assert main([*args, "--no-test"]) == 0
    mb = Mailbox.objects.get()
    assert capsys.readouterr().out == f"mailbox {mb.pk} added: {user.email} (syncing inbox, sent)\n"

    assert main(["mailbox", "test", str(mb.pk)]) == 1  # SMTP port 1 is closed
    out = capsys.readouterr()
    assert "IMAP: ok" in out.out and "folder: Sent (sent)" in out.out
    assert "SMTP: SMTP server 127.0.0.1:1 refused the connection: check the port (1)." in out.err

    assert main(["sync", "--once", "--mailbox", user.email]) == 0
    out = capsys.readouterr().out
    assert f"{user.email} INBOX: 4 new" in out and f"{user.email} Sent: 0 new" in out
    assert Message.objects.filter(state="linked").count() == 4

    assert main(["mailbox", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["health"] == "ok"
    assert {"name": "INBOX", "role": "inbox", "stored": 4, "linked": 4, "quarantined": 0, "server": 4,
            "backfill_done": True} in listed[0]["folders"]
    Message.objects.filter(pk=Message.objects.order_by("id")[0].pk).update(state="parsed")  # one still to link
    assert main(["mailbox", "list"]) == 0
    assert "      inbox    INBOX                    stored 4 / linked 3 / on server 4\n" in capsys.readouterr().out

    assert main(["mailbox", "remove", user.email]) == 0
    assert Mailbox.objects.count() == 0
    assert main(["mailbox", "remove", "999"]) == 1
    assert "no mailbox '999'" in capsys.readouterr().err


def test_quarantine_list_and_replay(team: Any, capsys: Any, monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    from mailroom.ingest.rawstore import IncomingRaw, store_batch
    from mailroom.parsing import workers

    settings.MAILROOM_PARSE_PROCESSES = 0  # the broken parser is patched into this process
    bad = make_mail(1, subject="poison")
    store_batch(team_id=team.pk, kind="lmtp", items=[IncomingRaw(raw=bad, key="b"), IncomingRaw(raw=make_mail(2), key="g")])
    real = workers.parse_message

    def flaky(raw: bytes, **kwargs: Any) -> Any:
        if b"poison" in raw:
            raise ValueError("parser exploded on this one")
        return real(raw, **kwargs)

    monkeypatch.setattr(workers, "parse_message", flaky)
    assert main(["sync", "--once"]) == 0  # no mailboxes: just processes the pipeline
    capsys.readouterr()
    poison = Message.objects.get(subject="poison")
    assert (poison.state, poison.attempts) == ("quarantined", 3)
    assert poison.last_error.startswith("ValueError: parser exploded on this one")
    assert Message.objects.exclude(pk=poison.pk).get().state == "linked"  # the rest flowed on

    assert main(["quarantine", "list"]) == 0
    assert capsys.readouterr().out == f"message {poison.pk} <{poison.message_id}>: ValueError: parser exploded on this one\n"

    monkeypatch.setattr(workers, "parse_message", real)  # the fix is deployed
    assert main(["quarantine", "replay"]) == 0
    assert capsys.readouterr().out.startswith("replayed 1 messages and 0 import failures")
    poison.refresh_from_db()
    assert (poison.state, poison.attempts, poison.last_error) == ("linked", 0, "")


def test_keys_generate_prints_a_usable_key(capsys: Any) -> None:
    from mailroom.core.crypto import parse_keys

    assert main(["keys", "generate", "--kid", "k2026"]) == 0
    spec = capsys.readouterr().out.strip()
    ring = parse_keys(spec)
    assert ring.active_kid == "k2026" and len(ring.keys["k2026"]) == 32


def test_no_command_prints_help(capsys: Any) -> None:
    assert main([]) == 2
    assert "serve" in capsys.readouterr().out


def test_user_list_set_password_and_team_admin(capsys: Any) -> None:
    from django.contrib.auth import get_user_model

    assert main(["user", "create", "boss", "--password=p-1", "--team", "Sales", "--admin"]) == 0
    assert main(["user", "create", "agent", "--password=p-2", "--team", "Sales"]) == 0
    capsys.readouterr()
    assert main(["user", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["agent", "-", "Sales", "(member)"]
    assert lines[2].split() == ["boss", "-", "Sales", "(admin)"]
    assert main(["user", "set-password", "agent", "--password=new-pass-3"]) == 0
    assert capsys.readouterr().out == "password of agent set\n"
    assert get_user_model().objects.get(username="agent").check_password("new-pass-3")
    assert main(["user", "set-password", "nobody", "--password=x"]) == 1
    assert "no user 'nobody': see 'mailroom user list'" in capsys.readouterr().err


def test_a_fresh_data_dir_says_run_migrate(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["MAILROOM_DATA_DIR"] = str(tmp_path)
    for args in (["mailbox", "list"], ["user", "list"]):
        res = subprocess.run([sys.executable, "-m", "mailroom.cli", *args], env=env, capture_output=True, text=True,
                             timeout=120)
        assert (res.returncode, res.stdout) == (1, "")
        assert res.stderr == ("mailroom: the database is not set up yet (or is older than this version): run "
                              "'mailroom migrate' first ('mailroom serve' migrates by itself)\n")
