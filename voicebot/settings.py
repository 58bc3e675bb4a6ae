"""voicebot settings. Every value comes from the environment; see .env.example.

A `.env` file beside manage.py is read first, without overriding variables already set.
Embedded defaults (SQLite, the in-memory channel layer, development credentials) apply only
with DJANGO_DEBUG on; in production a missing or bad variable stops start-up and names it.
"""

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv(BASE_DIR / ".env", override=False)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_str(name: str, default: str = "") -> str:
    """The variable's value; empty counts as unset, as in most .env files."""
    return os.environ.get(name, "").strip() or default


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None


def env_seconds(name: str, default: float) -> float:
    """A positive duration in seconds (fractions allowed)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ImproperlyConfigured(f"{name} must be a positive number of seconds, not {raw!r}")
    return value


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def require(name: str, value: str, why: str) -> str:
    if not value:
        raise ImproperlyConfigured(f"{name} is required {why}; see .env.example")
    return value


DEBUG = env_bool("DJANGO_DEBUG", False)
_PRODUCTION = "when DJANGO_DEBUG is off"

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        require("DJANGO_SECRET_KEY", SECRET_KEY, _PRODUCTION)
    SECRET_KEY = "django-insecure-development-only-key-do-not-use-in-production"
elif not DEBUG and not (
    # Django's own rule, the one `check --deploy` warns about (security.W009): a warning
    # nobody reads does not protect sessions, password resets or CSRF tokens.
    len(SECRET_KEY) >= SECRET_KEY_MIN_LENGTH
    and len(set(SECRET_KEY)) >= SECRET_KEY_MIN_UNIQUE_CHARACTERS
    and not SECRET_KEY.startswith(SECRET_KEY_INSECURE_PREFIX)
):
    raise ImproperlyConfigured(
        f"DJANGO_SECRET_KEY must be a random string of {SECRET_KEY_MIN_LENGTH}+ characters "
        f"with at least {SECRET_KEY_MIN_UNIQUE_CHARACTERS} different ones, not starting with "
        f"{SECRET_KEY_INSECURE_PREFIX!r}"
    )

# PUBLIC_URL is the https base Twilio reaches us at. Signatures are computed over it, and the
# TwiML we return points Twilio's stream at it, so it must be the outside address, not the
# address the proxy forwards to.
PUBLIC_URL = env_str("PUBLIC_URL", "http://127.0.0.1:8000" if DEBUG else "").rstrip("/")
require("PUBLIC_URL", PUBLIC_URL, _PRODUCTION)
_public = urlsplit(PUBLIC_URL)
if _public.scheme not in {"http", "https"} or not _public.hostname or _public.path:
    raise ImproperlyConfigured(f"PUBLIC_URL must look like https://host[:port], not {PUBLIC_URL!r}")
if not DEBUG and _public.scheme != "https":
    raise ImproperlyConfigured("PUBLIC_URL must use https when DJANGO_DEBUG is off")
PUBLIC_HOST = _public.netloc

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost" if DEBUG else "")
if not ALLOWED_HOSTS:
    require("ALLOWED_HOSTS", "", _PRODUCTION)
if _public.hostname not in ALLOWED_HOSTS and "*" not in ALLOWED_HOSTS:
    ALLOWED_HOSTS.append(_public.hostname)
CSRF_TRUSTED_ORIGINS = [f"{_public.scheme}://{_public.netloc}"]

# Twilio. Without an account in development the server talks to the local Twilio emulator
# that `manage.py simulate_call` runs, so a whole call works with no credentials at all.
DEV_TWILIO_ACCOUNT_SID = "AC" + "0" * 32
DEV_TWILIO_AUTH_TOKEN = "development-auth-token"
DEV_TWILIO_API_BASE_URL = "http://127.0.0.1:8010"
TWILIO_ACCOUNT_SID = env_str("TWILIO_ACCOUNT_SID")
TWILIO_AUTH_TOKEN = env_str("TWILIO_AUTH_TOKEN")
TWILIO_API_BASE_URL = env_str("TWILIO_API_BASE_URL").rstrip("/")
if not TWILIO_ACCOUNT_SID and DEBUG:
    TWILIO_ACCOUNT_SID = DEV_TWILIO_ACCOUNT_SID
    TWILIO_AUTH_TOKEN = TWILIO_AUTH_TOKEN or DEV_TWILIO_AUTH_TOKEN
    TWILIO_API_BASE_URL = TWILIO_API_BASE_URL or DEV_TWILIO_API_BASE_URL
require("TWILIO_ACCOUNT_SID", TWILIO_ACCOUNT_SID, _PRODUCTION)
require("TWILIO_AUTH_TOKEN", TWILIO_AUTH_TOKEN, "to check Twilio's signatures")
if not (TWILIO_ACCOUNT_SID.startswith("AC") and len(TWILIO_ACCOUNT_SID) == 34):
    raise ImproperlyConfigured("TWILIO_ACCOUNT_SID must be 'AC' followed by 32 characters")
if TWILIO_API_BASE_URL and urlsplit(TWILIO_API_BASE_URL).scheme not in {"http", "https"}:
    raise ImproperlyConfigured("TWILIO_API_BASE_URL must be an http(s) URL or empty")

# Each REST operation (hang up, transfer, call out) must finish within this, or staff are told
# Twilio did not answer and the caller is not left waiting in silence.
TWILIO_HTTP_TIMEOUT_SECONDS = env_seconds("TWILIO_HTTP_TIMEOUT_SECONDS", 10.0)

# Recordings older than this many days are deleted at Twilio and here by
# `manage.py purge_recordings` (schedule it daily); 0 keeps them for ever.
RECORDING_RETENTION_DAYS = env_int("RECORDING_RETENTION_DAYS", 90)
if RECORDING_RETENTION_DAYS < 0:
    raise ImproperlyConfigured("RECORDING_RETENTION_DAYS must be 0 (keep) or a number of days")

# Development only: accept unsigned webhooks, with a warning logged on every request.
TWILIO_SKIP_SIGNATURE_VALIDATION = env_bool("TWILIO_SKIP_SIGNATURE_VALIDATION", False)
if TWILIO_SKIP_SIGNATURE_VALIDATION and not DEBUG:
    raise ImproperlyConfigured("TWILIO_SKIP_SIGNATURE_VALIDATION may only be set with DJANGO_DEBUG")

# How long the stream token in the TwiML stays valid; Twilio opens the stream within seconds.
STREAM_TOKEN_MAX_AGE_SECONDS = env_int("STREAM_TOKEN_MAX_AGE_SECONDS", 300)
# Anyone can open the media stream socket. One that has not sent a valid `start` (Twilio's
# comes within a second) is closed after this long, and each process holds at most
# STREAM_UNAUTHENTICATED_MAX of them: further upgrades are refused at once, so strangers
# cannot use up the file descriptors that webhooks and calls need.
STREAM_START_TIMEOUT_SECONDS = env_int("STREAM_START_TIMEOUT_SECONDS", 5)
STREAM_UNAUTHENTICATED_MAX = env_int("STREAM_UNAUTHENTICATED_MAX", 200)
if STREAM_START_TIMEOUT_SECONDS < 1:
    raise ImproperlyConfigured("STREAM_START_TIMEOUT_SECONDS must be at least 1")
if STREAM_UNAUTHENTICATED_MAX < 1:
    raise ImproperlyConfigured("STREAM_UNAUTHENTICATED_MAX must be at least 1")

# Ghost calls. A process holding media streams writes that it is alive every
# STREAM_HEARTBEAT_SECONDS (one UPDATE per process, none while it holds no stream); its
# streams are lost once it is silent for STREAM_STALE_SECONDS. Every
# RECONCILE_INTERVAL_SECONDS one reconciler (a lease in the database) asks Twilio about calls
# whose stream is lost, and about calls still queued/ringing with no stream after
# RECONCILE_UNANSWERED_GRACE_SECONDS, then resumes or truthfully ends them. CALL_RECONCILER
# runs it inside each server process; `manage.py reconcile_calls` runs it on its own.
STREAM_HEARTBEAT_SECONDS = env_seconds("STREAM_HEARTBEAT_SECONDS", 15.0)
STREAM_STALE_SECONDS = env_seconds("STREAM_STALE_SECONDS", 40.0)
RECONCILE_INTERVAL_SECONDS = env_seconds("RECONCILE_INTERVAL_SECONDS", 15.0)
RECONCILE_UNANSWERED_GRACE_SECONDS = env_seconds("RECONCILE_UNANSWERED_GRACE_SECONDS", 30.0)
CALL_RECONCILER = env_bool("CALL_RECONCILER", True)

# Outbound calls with answering-machine detection: how long the agent waits for Twilio's
# verdict before greeting whoever answered (docs/twilio-rest.md#answering-machine-detection).
AMD_WAIT_SECONDS = env_seconds("AMD_WAIT_SECONDS", 6.0)
# Campaigns: run the dialler in every server process (or only in `manage.py run_campaigns`),
# and how often it settles finished calls and places new ones.
CAMPAIGN_DIALLER = env_bool("CAMPAIGN_DIALLER", True)
CAMPAIGN_DIALLER_INTERVAL_SECONDS = env_seconds("CAMPAIGN_DIALLER_INTERVAL_SECONDS", 2.0)
# A contact claimed by a dialler that never recorded a call for it is released after this.
CAMPAIGN_CLAIM_STALE_SECONDS = env_seconds("CAMPAIGN_CLAIM_STALE_SECONDS", 120.0)
if STREAM_STALE_SECONDS <= 2 * STREAM_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        "STREAM_STALE_SECONDS must be more than twice STREAM_HEARTBEAT_SECONDS, or a living "
        "process would look dead between two heartbeats"
    )

# Twilio's webhooks and the admin's forms are a few kilobytes; a larger body is refused (413)
# before it is read into memory (voicebot/limits.py).
MAX_REQUEST_BODY_BYTES = env_int("MAX_REQUEST_BODY_BYTES", 1024 * 1024)
if MAX_REQUEST_BODY_BYTES <= 0:
    raise ImproperlyConfigured("MAX_REQUEST_BODY_BYTES must be a positive number of bytes")

OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_REALTIME_URL = env_str("OPENAI_REALTIME_URL", "wss://api.openai.com/v1/realtime")
if urlsplit(OPENAI_REALTIME_URL).scheme not in {"ws", "wss"}:
    raise ImproperlyConfigured("OPENAI_REALTIME_URL must be a ws:// or wss:// URL")
# A Realtime session lasts at most 60 minutes: a call still going after this long moves to a
# new model session, with the conversation replayed, at its next quiet moment.
REALTIME_SESSION_RENEW_SECONDS = env_int("REALTIME_SESSION_RENEW_SECONDS", 55 * 60)
# Caller audio goes to the model in appends of this many ms (whole 20 ms frames): fewer
# messages per call, at the price of up to this much later barge-in detection
# (README, Performance). 20 sends every frame as it comes.
CALLER_AUDIO_CHUNK_MS = env_int("CALLER_AUDIO_CHUNK_MS", 60)
# How long a call tries to reconnect a dropped model before the apology and the fallback.
MODEL_RECONNECT_TIMEOUT_SECONDS = env_int("MODEL_RECONNECT_TIMEOUT_SECONDS", 5)
# On SIGTERM/SIGINT a server process hands its calls to another process; it exits once
# they are handed over, or after this many seconds whatever is left.
DRAIN_DEADLINE_SECONDS = env_int("DRAIN_DEADLINE_SECONDS", 30)

# Post-call analysis (calls/services/analysis.py): a summary and the agent's fields from the
# transcript, by the Responses API at OPENAI_API_BASE_URL (a local peer in tests). Without
# OPENAI_API_KEY a deterministic summary from the call's record is written instead.
OPENAI_API_BASE_URL = env_str("OPENAI_API_BASE_URL", "https://api.openai.com")
if urlsplit(OPENAI_API_BASE_URL).scheme not in {"http", "https"}:
    raise ImproperlyConfigured("OPENAI_API_BASE_URL must be an http:// or https:// URL")
ANALYSIS_MODEL = env_str("ANALYSIS_MODEL", "gpt-4.1-mini")
# Run the analysis loop in each server process; `manage.py analyze_calls` runs it otherwise.
CALL_ANALYSIS = env_bool("CALL_ANALYSIS", True)
# Wait this long after a call ends: the session writes its last transcript lines meanwhile.
ANALYSIS_DELAY_SECONDS = env_seconds("ANALYSIS_DELAY_SECONDS", 15.0)
ANALYSIS_POLL_SECONDS = env_seconds("ANALYSIS_POLL_SECONDS", 5.0)
ANALYSIS_CONCURRENCY = env_int("ANALYSIS_CONCURRENCY", 2)
ANALYSIS_MAX_ATTEMPTS = env_int("ANALYSIS_MAX_ATTEMPTS", 4)
# Attempt n waits ANALYSIS_RETRY_SECONDS * 2**(n-1) after the previous one failed.
ANALYSIS_RETRY_SECONDS = env_seconds("ANALYSIS_RETRY_SECONDS", 30.0)
ANALYSIS_HTTP_TIMEOUT_SECONDS = env_seconds("ANALYSIS_HTTP_TIMEOUT_SECONDS", 60.0)
if ANALYSIS_CONCURRENCY < 1 or ANALYSIS_MAX_ATTEMPTS < 1:
    raise ImproperlyConfigured("ANALYSIS_CONCURRENCY and ANALYSIS_MAX_ATTEMPTS must be at least 1")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "phonenumber_field",
    "axes",
    "calls",
    "agents",
    "campaigns",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "calls.middleware.StaffTimeZoneMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: turns a locked-out login into its lockout response.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "voicebot.urls"
ASGI_APPLICATION = "voicebot.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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


def sqlite_database(path: str) -> dict:
    """SQLite as the project uses it, whether named by SQLITE_PATH or a sqlite:// URL."""
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": path,
        # Kept open between writes, as for PostgreSQL: the media consumers write from
        # the thread pool many times a minute, and reopening the file (with its
        # PRAGMAs) each time was a third of that work.
        "CONN_MAX_AGE": 60,
        "OPTIONS": {
            # Webhooks and the stream consumers write concurrently; wait rather than fail.
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            # Write-ahead log: the live view reads while calls write, and a commit costs
            # one append instead of a rollback journal created, synced and deleted.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }


# PostgreSQL connections come from one pool per process. Under ASGI every request and every
# database_sync_to_async call runs in a thread of its own, so a connection kept per thread
# (CONN_MAX_AGE) grows with the load until PostgreSQL refuses new ones; the pool caps what a
# process holds at DATABASE_POOL_MAX_SIZE, and work beyond it waits for a free connection.
DATABASE_POOL_MIN_SIZE = env_int("DATABASE_POOL_MIN_SIZE", 2)
DATABASE_POOL_MAX_SIZE = env_int("DATABASE_POOL_MAX_SIZE", 10)
# Twilio gives up on a webhook after 15 s; fail well before that rather than queue forever.
DATABASE_POOL_TIMEOUT_SECONDS = env_int("DATABASE_POOL_TIMEOUT_SECONDS", 10)
if DATABASE_POOL_MAX_SIZE < 1:
    raise ImproperlyConfigured("DATABASE_POOL_MAX_SIZE must be at least 1")
if not 0 <= DATABASE_POOL_MIN_SIZE <= DATABASE_POOL_MAX_SIZE:
    raise ImproperlyConfigured(
        "DATABASE_POOL_MIN_SIZE must be between 0 and DATABASE_POOL_MAX_SIZE"
    )
if DATABASE_POOL_TIMEOUT_SECONDS <= 0:
    raise ImproperlyConfigured("DATABASE_POOL_TIMEOUT_SECONDS must be positive")

DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    import dj_database_url

    _scheme = urlsplit(DATABASE_URL).scheme
    if _scheme not in {"postgres", "postgresql", "pgsql", "sqlite"}:
        raise ImproperlyConfigured("DATABASE_URL must be a postgres:// (or sqlite://) URL")
    if _scheme == "sqlite":
        DATABASES = {"default": sqlite_database(dj_database_url.parse(DATABASE_URL)["NAME"])}
    else:
        # The pool requires CONN_MAX_AGE 0: a connection goes back to the pool at the end of
        # each request or unit of work instead of staying with its thread.
        DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": DATABASE_POOL_MIN_SIZE,
            "max_size": DATABASE_POOL_MAX_SIZE,
            "timeout": DATABASE_POOL_TIMEOUT_SECONDS,
        }
else:
    DATABASES = {"default": sqlite_database(env_str("SQLITE_PATH", str(BASE_DIR / "db.sqlite3")))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    if urlsplit(REDIS_URL).scheme not in {"redis", "rediss", "unix"}:
        raise ImproperlyConfigured("REDIS_URL must be a redis:// or rediss:// URL")
    from channels_redis.core import RedisChannelLayer
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        # A consumer's read is a BZPOPMIN that blocks for the layer's own
                        # 5 s (`brpop_timeout`) and then starts again. redis-py 8 reads with
                        # a 5 s socket timeout by default: the two met, and every channel
                        # left quiet for 5 s died of "Timeout reading from …". The socket
                        # must wait longer than the block, with room for a slow reply.
                        "socket_timeout": RedisChannelLayer.brpop_timeout + 5,
                        # An unreachable Redis is known within this, not the socket timeout.
                        "socket_connect_timeout": 2,
                        # A pooled connection left over from before a Redis restart fails
                        # on first use; one retry on a new connection makes that invisible.
                        "retry": Retry(NoBackoff(), 1),
                    }
                ],
                "capacity": 1000,
                "expiry": 30,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# A staff action (clear, say, hang up, transfer) waits this long for the process holding the
# call's stream to confirm it acted; after that staff read that the stream did not answer.
CALL_CONTROL_REPLY_SECONDS = env_seconds("CALL_CONTROL_REPLY_SECONDS", 2.0)
# /healthz gives each of its checks (the database, the channel layer) at most this long.
HEALTH_CHECK_TIMEOUT_SECONDS = env_seconds("HEALTH_CHECK_TIMEOUT_SECONDS", 1.0)

# Login throttling (django-axes): after LOGIN_FAILURE_LIMIT wrong passwords for one user name
# from one address, that pair is locked out (even the right password is refused, HTTP 429)
# for LOGIN_LOCKOUT_MINUTES. A superuser unlocks it sooner: admin -> Axes -> Access attempts
# (delete the row), or `manage.py axes_reset` (everything) / `axes_reset_username NAME`.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_LOCKOUT_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The address whose failures count; behind proxies, taken from X-Forwarded-For from the right.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
AXES_CLIENT_IP_CALLABLE = "voicebot.client_ip.client_ip"
if AXES_FAILURE_LIMIT < 1 or AXES_COOLOFF_TIME <= timedelta(0) or TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured(
        "LOGIN_FAILURE_LIMIT and LOGIN_LOCKOUT_MINUTES must be positive, "
        "TRUSTED_PROXY_COUNT zero or more"
    )

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where `manage.py collectstatic` puts the admin's and the console's files; in production the
# proxy serves this directory at /static/ (deploy/nginx-voicebot.conf), never daphne.
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))

PHONENUMBER_DB_FORMAT = "E164"
PHONENUMBER_DEFAULT_FORMAT = "E164"

# Behind a TLS-terminating proxy (the usual daphne deployment) the proxy must set this header.
if env_bool("SECURE_PROXY_SSL_HEADER", not DEBUG):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
USE_X_FORWARDED_HOST = env_bool("USE_X_FORWARDED_HOST", False)
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Twilio posts over https to PUBLIC_URL; never redirect its webhooks or health checks.
    SECURE_REDIRECT_EXEMPT = [r"^twilio/", r"^healthz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        # Escapes control characters: a newline from outside cannot start a forged line.
        "plain": {
            "class": "voicebot.log.EscapingFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "voicebot": {"level": LOG_LEVEL},
        "calls": {"level": LOG_LEVEL},
        "agents": {"level": LOG_LEVEL},
    },
}
