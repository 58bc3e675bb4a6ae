"""/healthz: 200 when the database and the channel layer answer, 503 with the reason if not.

The Redis outage itself is tested with real processes in test_redis_control.py.
"""

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
from channels.layers import channel_layers

from calls import health
from peers.ports import free_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_layer_at(settings) -> Iterator:
    """Point the channel layer at a given Redis address for the test."""

    def point(url: str) -> None:
        settings.CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {"hosts": [{"address": url, "socket_timeout": 10}]},
            }
        }
        channel_layers.backends.clear()

    yield point
    channel_layers.backends.clear()


def test_healthz_answers_200_when_everything_answers(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "checks": {"database": "ok", "channel_layer": "ok"}}


def test_healthz_answers_503_with_the_reason_when_redis_is_not_there(client, redis_layer_at):
    redis_layer_at(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["ok"] is False and body["checks"]["database"] == "ok"
    assert body["checks"]["channel_layer"].startswith("down: "), body


def test_healthz_answers_within_its_timeout_when_redis_hangs(client, settings, redis_layer_at):
    settings.HEALTH_CHECK_TIMEOUT_SECONDS = 0.3
    # A "Redis" that accepts connections and never answers, like a host gone half-dead.
    with socket.create_server(("127.0.0.1", 0)) as mute:
        redis_layer_at(f"redis://127.0.0.1:{mute.getsockname()[1]}/0")
        started = time.monotonic()
        response = client.get("/healthz")
        elapsed = time.monotonic() - started
    assert elapsed < 2
    assert response.status_code == 503
    assert response.json()["checks"]["channel_layer"] == "down: no answer within 0.3 s"


async def test_probes_at_the_same_moment_are_all_answered_ok():
    """nginx, the rolling-restart script and a monitor may ask at once: none is told "down"."""
    reports = await asyncio.gather(*(health.health_report(timeout_s=5) for _ in range(6)))
    assert [report["checks"] for report in reports] == [
        {"database": "ok", "channel_layer": "ok"}
    ] * 6
