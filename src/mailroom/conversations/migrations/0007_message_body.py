"""The parsed bodies move from conversations_message to a table of their own (MessageBody)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0006_parsed_date_index"),
    ]

    operations = [
        migrations.CreateModel(
            name="MessageBody",
            fields=[
                (
                    "message",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="body",
                        serialize=False,
                        to="conversations.message",
                    ),
                ),
                ("text", models.TextField(blank=True)),
                ("html", models.TextField(blank=True)),
                ("reply_text", models.TextField(blank=True)),
            ],
        ),
        migrations.RunSQL(
            "INSERT INTO conversations_messagebody (message_id, text, html, reply_text) "
            "SELECT id, text, html, reply_text FROM conversations_message "
            "WHERE text <> '' OR html <> '' OR reply_text <> ''",
            reverse_sql=(
                "UPDATE conversations_message SET "
                "text = (SELECT b.text FROM conversations_messagebody b WHERE b.message_id = conversations_message.id), "
                "html = (SELECT b.html FROM conversations_messagebody b WHERE b.message_id = conversations_message.id), "
                "reply_text = (SELECT b.reply_text FROM conversations_messagebody b "
                "WHERE b.message_id = conversations_message.id) "
                "WHERE id IN (SELECT message_id FROM conversations_messagebody)"
            ),
        ),
        migrations.RemoveField(model_name="message", name="text"),
        migrations.RemoveField(model_name="message", name="html"),
        migrations.RemoveField(model_name="message", name="reply_text"),
    ]
