"""Settings for the test suite: production-like, with known test credentials.

The values go through the environment so that they take the same path as in production.
Tests that start server processes pass TEST_ENVIRONMENT to them, with their own overrides.

The suite runs on SQLite and the in-memory channel layer unless the real environment names
PostgreSQL (DATABASE_URL) or Redis (REDIS_URL), as `.ci/run`'s second pass does; a `.env`
file never switches them. pytest-django creates and drops the test database itself
(`test_<name>`, one per xdist worker), so DATABASE_URL's own database is never touched.
"""

import os
from urllib.parse import urlsplit, urlunsplit

TEST_ENVIRONMENT = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJ",
    "ALLOWED_HOSTS": "testserver,127.0.0.1,localhost,voicebot.example.com",
    "PUBLIC_URL": "https://voicebot.example.com",
    "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
    "TWILIO_AUTH_TOKEN": "test-auth-token",
    "TWILIO_API_BASE_URL": "",
    "TWILIO_SKIP_SIGNATURE_VALIDATION": "false",
    "OPENAI_API_KEY": "sk-test",
    "OPENAI_REALTIME_URL": "wss://api.openai.com/v1/realtime",
    "SECURE_SSL_REDIRECT": "false",
    "LOG_LEVEL": "INFO",
    # No reconciler in the suite's servers unless a test asks for one: it would ask Twilio
    # about every test's calls.
    "CALL_RECONCILER": "false",
    # Nor a campaign dialler: tests that run campaigns start their own.
    "CAMPAIGN_DIALLER": "false",
    # Nor post-call analysis: tests that want it run it against a local peer.
    "CALL_ANALYSIS": "false",
    "OPENAI_API_BASE_URL": "http://127.0.0.1:9",
}
os.environ.update(TEST_ENVIRONMENT)
# Set even when empty, so that a developer's .env (read without overriding) cannot switch them.
os.environ["DATABASE_URL"] = os.environ.get("DATABASE_URL", "").strip()
_redis_url = os.environ.get("REDIS_URL", "").strip()
_xdist_worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1"... under pytest -n
if _redis_url and _xdist_worker:
    # One Redis database per xdist worker: groups such as the live calls feed have fixed
    # names, and a worker must not see another's calls. The servers a test starts inherit it.
    _parts = urlsplit(_redis_url)
    _database = 1 + int(_xdist_worker.removeprefix("gw")) % 15
    _redis_url = urlunsplit(_parts._replace(path=f"/{_database}"))
os.environ["REDIS_URL"] = _redis_url

from .settings import *  # noqa: E402, F403

# Password hashing dominates a suite that logs users in; the fast hasher keeps it quick.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# On SQLite: a file, not SQLite's in-memory database, so that server processes started by
# the tests (daphne, the simulator's target) see the same data as the test itself.
# One file per test run, so that runs side by side do not wipe each other's tables.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    TEST_DATABASE_PATH = os.environ.get("VOICEBOT_TEST_DATABASE") or str(
        BASE_DIR / "test-output" / f"test-db-{os.getpid()}.sqlite3"  # noqa: F405
    )
    os.makedirs(os.path.dirname(TEST_DATABASE_PATH), exist_ok=True)
    DATABASES["default"]["TEST"] = {"NAME": TEST_DATABASE_PATH}  # noqa: F405
