"""Settings come from the environment; bad production values stop start-up by name."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from voicebot.test_settings import TEST_ENVIRONMENT

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, **overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **TEST_ENVIRONMENT, "DJANGO_SETTINGS_MODULE": "voicebot.settings"}
    env.update(overrides)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def shell_prints(code: str, **overrides: str) -> str:
    """The last line `manage.py shell -c code` prints under the given environment."""
    result = manage("shell", "-c", code, **overrides)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DJANGO_SECRET_KEY", "", "DJANGO_SECRET_KEY is required"),
        ("DJANGO_SECRET_KEY", "short", "DJANGO_SECRET_KEY must be a random string"),
        ("DJANGO_SECRET_KEY", "a" * 50, "DJANGO_SECRET_KEY must be a random string"),
        ("DJANGO_SECRET_KEY", "abcd" * 20, "DJANGO_SECRET_KEY must be a random string"),
        (
            "DJANGO_SECRET_KEY",
            "django-insecure-" + "0123456789abcdef" * 4,
            "DJANGO_SECRET_KEY must be a random string",
        ),
        ("PUBLIC_URL", "", "PUBLIC_URL is required"),
        ("PUBLIC_URL", "http://voicebot.example.com", "PUBLIC_URL must use https"),
        ("PUBLIC_URL", "voicebot.example.com", "PUBLIC_URL must look like"),
        ("ALLOWED_HOSTS", "", "ALLOWED_HOSTS is required"),
        ("TWILIO_ACCOUNT_SID", "", "TWILIO_ACCOUNT_SID is required"),
        ("TWILIO_ACCOUNT_SID", "XX123", "TWILIO_ACCOUNT_SID must be"),
        ("TWILIO_AUTH_TOKEN", "", "TWILIO_AUTH_TOKEN is required"),
        ("DJANGO_DEBUG", "maybe", "DJANGO_DEBUG must be true or false"),
        ("REDIS_URL", "http://localhost", "REDIS_URL must be"),
        ("DATABASE_URL", "mysql://x", "DATABASE_URL must be"),
        ("DATABASE_POOL_MAX_SIZE", "0", "DATABASE_POOL_MAX_SIZE must be at least 1"),
        ("DATABASE_POOL_MAX_SIZE", "many", "DATABASE_POOL_MAX_SIZE must be an integer"),
        ("DATABASE_POOL_MIN_SIZE", "50", "DATABASE_POOL_MIN_SIZE must be between 0 and"),
        ("DATABASE_POOL_TIMEOUT_SECONDS", "0", "DATABASE_POOL_TIMEOUT_SECONDS must be positive"),
        ("OPENAI_REALTIME_URL", "https://api.openai.com", "OPENAI_REALTIME_URL must be"),
        ("TWILIO_SKIP_SIGNATURE_VALIDATION", "true", "may only be set with DJANGO_DEBUG"),
        ("LOGIN_FAILURE_LIMIT", "0", "LOGIN_FAILURE_LIMIT and LOGIN_LOCKOUT_MINUTES must be"),
        ("TRUSTED_PROXY_COUNT", "-1", "TRUSTED_PROXY_COUNT zero or more"),
        ("MAX_REQUEST_BODY_BYTES", "0", "MAX_REQUEST_BODY_BYTES must be a positive"),
        ("TWILIO_HTTP_TIMEOUT_SECONDS", "0", "TWILIO_HTTP_TIMEOUT_SECONDS must be a positive"),
        ("TWILIO_HTTP_TIMEOUT_SECONDS", "soon", "TWILIO_HTTP_TIMEOUT_SECONDS must be a positive"),
    ],
)
def test_a_bad_production_setting_stops_start_up_and_names_the_variable(variable, value, message):
    result = manage("check", **{variable: value})
    assert result.returncode != 0
    assert message in result.stderr


def test_check_deploy_is_clean_in_a_production_like_environment():
    result = manage("check", "--deploy", "--fail-level", "WARNING", SECURE_SSL_REDIRECT="true")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_development_needs_no_accounts_at_all():
    blank = {name: "" for name in TEST_ENVIRONMENT}
    result = manage("check", **{**blank, "DJANGO_DEBUG": "true"})
    assert result.returncode == 0, result.stderr


def test_redis_url_switches_the_channel_layer():
    code = "from django.conf import settings; print(settings.CHANNEL_LAYERS['default']['BACKEND'])"
    printed = shell_prints(code, REDIS_URL="redis://127.0.0.1:6390/0")
    assert printed == "channels_redis.core.RedisChannelLayer"


def test_sqlite_keeps_a_write_ahead_log(tmp_path):
    code = (
        "from django.db import connection; c = connection.cursor(); "
        "print(c.execute('PRAGMA journal_mode').fetchone()[0], "
        "c.execute('PRAGMA synchronous').fetchone()[0])"
    )
    # synchronous 1 is NORMAL: durable at each checkpoint, no fsync per commit.
    assert shell_prints(code, DATABASE_URL="", SQLITE_PATH=str(tmp_path / "db.sqlite3")) == "wal 1"


def test_sqlite_connection_outlives_each_unit_of_work(tmp_path):
    # What database_sync_to_async does around each write from the stream consumers.
    code = (
        "from django.db import close_old_connections, connection; "
        "connection.ensure_connection(); first = connection.connection; "
        "close_old_connections(); connection.ensure_connection(); "
        "print(first is connection.connection)"
    )
    assert shell_prints(code, DATABASE_URL="", SQLITE_PATH=str(tmp_path / "db.sqlite3")) == "True"


def test_database_url_switches_to_postgresql():
    code = "from django.conf import settings; print(settings.DATABASES['default']['ENGINE'])"
    printed = shell_prints(code, DATABASE_URL="postgres://u:p@db.internal:5432/voicebot")
    assert printed == "django.db.backends.postgresql"


def test_postgresql_takes_its_connections_from_a_pool_of_the_configured_size():
    code = (
        "from django.conf import settings; d = settings.DATABASES['default']; "
        "print(d['CONN_MAX_AGE'], sorted(d['OPTIONS']['pool'].items()))"
    )
    printed = shell_prints(
        code,
        DATABASE_URL="postgres://u:p@db.internal:5432/voicebot",
        DATABASE_POOL_MAX_SIZE="7",
        DATABASE_POOL_MIN_SIZE="1",
        DATABASE_POOL_TIMEOUT_SECONDS="4",
    )
    # A pool requires CONN_MAX_AGE 0: connections go back to it, not stay with a thread.
    assert printed == "0 [('max_size', 7), ('min_size', 1), ('timeout', 4)]"


def test_a_sqlite_database_url_gets_the_same_options_as_sqlite_path(tmp_path):
    code = (
        "from django.conf import settings; from django.db import connection; "
        "d = settings.DATABASES['default']; c = connection.cursor(); "
        "print(d['CONN_MAX_AGE'], d['OPTIONS']['timeout'], d['OPTIONS']['transaction_mode'], "
        "c.execute('PRAGMA journal_mode').fetchone()[0])"
    )
    database_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    assert shell_prints(code, DATABASE_URL=database_url) == "60 20 IMMEDIATE wal"
