"""factory_boy factories: tests build rows through these, never by hand."""

from __future__ import annotations

import hashlib
from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from mailroom.accounts.models import Membership, Team
from mailroom.conversations.models import Message, Thread
from mailroom.crm.models import Company, CompanyDomain, Contact, ContactEmail, Deal
from mailroom.mailboxes.models import Folder, Mailbox


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"Team {n}")


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@company.test")
    password = factory.PostGenerationMethodCall("set_password", "pass-word-1")

    @factory.post_generation
    def team(self, create: bool, extracted: Any, **kwargs: Any) -> None:
        if not create:
            return
        self.save()
        if extracted is not None:
            Membership.objects.get_or_create(user=self, team=extracted)


class MailboxFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Mailbox
        skip_postgeneration_save = True

    team = factory.SubFactory(TeamFactory)
    name = factory.Sequence(lambda n: f"Mailbox {n}")
    email = factory.Sequence(lambda n: f"manager{n}@company.test")
    imap_host = "127.0.0.1"
    imap_port = 143
    imap_security = Mailbox.Security.PLAIN
    imap_username = factory.LazyAttribute(lambda o: o.email)
    smtp_host = "127.0.0.1"
    smtp_port = 587
    smtp_security = Mailbox.Security.PLAIN
    smtp_username = factory.LazyAttribute(lambda o: o.email)
    sync_roles = factory.LazyFunction(lambda: ["inbox", "sent"])

    @factory.post_generation
    def password(self, create: bool, extracted: Any, **kwargs: Any) -> None:
        self.set_secret({"password": extracted or "secret"})
        if create:
            self.save()


class FolderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Folder

    mailbox = factory.SubFactory(MailboxFactory)
    name = "INBOX"
    raw_name = factory.LazyAttribute(lambda o: o.name)
    role = Folder.Role.INBOX
    selected = True
    uidvalidity = 1


class CompanyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Company

    team = factory.SubFactory(TeamFactory)
    name = factory.Sequence(lambda n: f"Company {n}")


class CompanyDomainFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CompanyDomain

    company = factory.SubFactory(CompanyFactory)
    team = factory.LazyAttribute(lambda o: o.company.team)
    domain = factory.Sequence(lambda n: f"client{n}.test")


class ContactFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Contact

    team = factory.SubFactory(TeamFactory)
    name = factory.Sequence(lambda n: f"Contact {n}")


class ContactEmailFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ContactEmail

    contact = factory.SubFactory(ContactFactory)
    team = factory.LazyAttribute(lambda o: o.contact.team)
    address = factory.Sequence(lambda n: f"person{n}@client.test")
    canonical = factory.LazyAttribute(lambda o: o.address.lower())


class DealFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Deal

    team = factory.SubFactory(TeamFactory)
    title = factory.Sequence(lambda n: f"Deal {n}")


class ThreadFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Thread

    team = factory.SubFactory(TeamFactory)
    subject = factory.Sequence(lambda n: f"Subject {n}")


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    team = factory.SubFactory(TeamFactory)
    message_id = factory.Sequence(lambda n: f"msg{n}@client.test")
    message_id_hash = factory.LazyAttribute(lambda o: hashlib.sha256(o.message_id.encode()).hexdigest())
    content_hash = factory.LazyAttribute(lambda o: hashlib.sha256(("c" + o.message_id).encode()).hexdigest())
    subject = factory.Sequence(lambda n: f"Subject {n}")
    from_address = "person@client.test"
    date = factory.LazyFunction(timezone.now)
    received_at = factory.LazyFunction(timezone.now)


# --- issue 4: linking, CRM (appended) ---------------------------------------------------------------------
class ParticipantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "conversations.Participant"

    message = factory.SubFactory(MessageFactory)
    role = "from"
    address = factory.LazyAttribute(lambda o: o.message.from_address)


class IgnoreEntryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "crm.IgnoreEntry"

    team = factory.SubFactory(TeamFactory)
    kind = "domain"
    value = factory.Sequence(lambda n: f"ignored{n}.test")


class ThreadAliasFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "conversations.ThreadAlias"

    survivor = factory.SubFactory(ThreadFactory)
    team = factory.LazyAttribute(lambda o: o.survivor.team)
    absorbed_id = factory.Sequence(lambda n: 10_000_000 + n)
