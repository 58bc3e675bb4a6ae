"""Settings for the test suite: production-like, with known test credentials.

The values go through the environment so that they take the same path as in production.
Tests that start server processes pass TEST_ENVIRONMENT to them, with their own overrides.
"""

import os

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
    "REDIS_URL": "",
    "DATABASE_URL": "",
    "LOG_LEVEL": "INFO",
    # No reconciler in the suite's servers unless a test asks for one: it would ask Twilio
    # about every test's calls.
    "CALL_RECONCILER": "false",
    # Nor post-call analysis: tests that want it run it against a local peer.
    "CALL_ANALYSIS": "false",
    "OPENAI_API_BASE_URL": "http://127.0.0.1:9",
}
os.environ.update(TEST_ENVIRONMENT)

from .settings import *  # noqa: E402, F403

# Password hashing dominates a suite that logs users in; the fast hasher keeps it quick.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# A file, not SQLite's in-memory database, so that server processes started by the tests
# (daphne, the simulator's target) see the same data as the test itself.
# One file per test run, so that runs side by side do not wipe each other's tables.
TEST_DATABASE_PATH = os.environ.get("VOICEBOT_TEST_DATABASE") or str(
    BASE_DIR / "test-output" / f"test-db-{os.getpid()}.sqlite3"  # noqa: F405
)
os.makedirs(os.path.dirname(TEST_DATABASE_PATH), exist_ok=True)
DATABASES["default"]["TEST"] = {"NAME": TEST_DATABASE_PATH}  # noqa: F405
