"""Drop single-column indexes that a composite index already leads with (cheaper message/thread writes
during linking): Message.thread (message_thread_date), Message.team (message_team_mid,
message_team_date), Thread.team (thread_team_recent), Thread.deal (thread_deal_recent),
Thread.normalized_subject (thread_team_subject; every lookup is per team).

Only the indexes are dropped (``DROP INDEX IF EXISTS``): a plain AlterField would re-add the foreign
key constraints on PostgreSQL (validating whole tables) and rebuild the tables on SQLite."""

import django.db.models.deletion
from django.db import migrations, models

INDEXES = [
    "conversations_message_thread_id_2e6e7032",
    "conversations_message_team_id_118a7879",
    "conversations_thread_team_id_88d0076f",
    "conversations_thread_deal_id_e208f669",
    "conversations_thread_normalized_subject_73208704",
    "conversations_thread_normalized_subject_73208704_like",  # PostgreSQL's varchar_pattern_ops twin
]


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("conversations", "0003_linking"),
        ("crm", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="message",
                    name="thread",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="messages",
                        to="conversations.thread",
                    ),
                ),
                migrations.AlterField(
                    model_name="message",
                    name="team",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="messages",
                        to="accounts.team",
                    ),
                ),
                migrations.AlterField(
                    model_name="thread",
                    name="team",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="threads",
                        to="accounts.team",
                    ),
                ),
                migrations.AlterField(
                    model_name="thread",
                    name="deal",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="threads",
                        to="crm.deal",
                    ),
                ),
                migrations.AlterField(
                    model_name="thread",
                    name="normalized_subject",
                    field=models.CharField(blank=True, max_length=1000),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    sql=[f'DROP INDEX IF EXISTS "{name}"' for name in INDEXES],
                    reverse_sql=migrations.RunSQL.noop,
                )
            ],
        )
    ]
