import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
import redis
from channels.layers import channel_layers
from django.conf import settings

# Its fixtures come in through pytest_plugins; register it first so its asserts explain.
pytest.register_assert_rewrite("tests.agent_harness")

from agents.models import Agent, TransferTarget  # noqa: E402
from peers.ports import free_port, listening  # noqa: E402

from .postgres import postgres_binaries, postgres_server  # noqa: E402
from .servers import RedisServer  # noqa: E402


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_binary(name: str, *, why: str = "") -> str:
    """The path of a system program the test needs.

    Locally a missing program skips the test with the reason; under CI (CI=true) it fails,
    because `.ci/run` installs every such program and a skip there would hide a gap.
    """
    path = shutil.which(name)
    if path:
        return path
    missing_tool(f"{name} is not installed{f' ({why})' if why else ''}; .ci/run installs it")


def missing_tool(message: str) -> None:
    """Skip locally, fail under CI, for something `.ci/run` installs."""
    if under_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server for the session, on a free port, stopped afterwards."""
    binary = require_binary("redis-server", why="needed for the multi-process channel layer")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with listening(process, port):
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL server for the session (its `postgres` database's URL)."""
    if postgres_binaries() is None:
        missing_tool("PostgreSQL's server (initdb) is not installed; .ci/run installs it")
    with postgres_server(max_connections=100) as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_channel_layer() -> Iterator[None]:
    """Each test gets a channel layer of its own, and with Redis an empty one.

    channels-redis ties a layer to the event loop that receives on it (and its locks and
    queues to the loop that first used them), while pytest-asyncio runs each test in a new
    loop: a layer kept from an earlier test refuses to receive, or fails with "bound to a
    different event loop". What an earlier test left in Redis must not reach this one either.
    """
    channel_layers.backends.clear()
    config = settings.CHANNEL_LAYERS["default"]
    if config["BACKEND"] == "channels_redis.core.RedisChannelLayer":
        prefix = config["CONFIG"].get("prefix", "asgi")
        with redis.Redis.from_url(settings.REDIS_URL) as client:
            stale = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if stale:
                client.delete(*stale)
    yield
    channel_layers.backends.clear()


@pytest.fixture
def stoppable_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may stop and start again on the same port."""
    server = RedisServer(require_binary("redis-server", why="needed to test Redis outages"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def agent(db) -> Agent:
    agent = Agent.objects.create(
        name="Front desk", phone_number="+14155550100", greeting="Hello, how can I help?"
    )
    TransferTarget.objects.create(
        agent=agent, name="reception", phone_number="+14155550199", is_default=True
    )
    return agent
