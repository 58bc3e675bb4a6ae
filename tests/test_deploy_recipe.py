"""The deployment recipe in deploy/, run as an operator would run it.

Debian's nginx, with the shipped site file and a TLS certificate, in front of two daphne
processes started from the shipped systemd unit's command line, sharing a redis-server and
one database. Through nginx: Twilio's signed webhooks validate, a whole simulated call
streams its audio, a body over the limit gets 413, and static files come from
STATIC_ROOT. Then deploy/rolling-restart restarts both processes one after the other while
the site keeps answering.
"""

import asyncio
import json
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from django.conf import settings

from agents.management.commands.seed_demo import DEMO_NUMBER, DEMO_TARGET_NUMBER
from calls import security
from calls.simulator.call import SimulatedCall, share_rest_emulator
from calls.simulator.rest import TwilioRestEmulator
from peers.ports import free_port, wait_for_port
from peers.realtime import FakeRealtimeServer, Reply

from .conftest import require_binary
from .deploy_site import (
    ROLLING_RESTART,
    FakeSystemd,
    nginx,
    render_site,
    render_unit,
    self_signed_certificate,
    unit_settings,
)
from .desks import GREETING_TEXT, desk_of, greetings
from .servers import ScratchDatabase, server_environment

pytestmark = [pytest.mark.nginx, pytest.mark.redis]

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_HOST = "voicebot.example.com"  # the host of the suite's PUBLIC_URL
# What the application will accept (MAX_REQUEST_BODY_BYTES, 1 MB by default); nginx's
# client_max_body_size in the shipped site must be the same.
MAX_BODY_BYTES = getattr(settings, "MAX_REQUEST_BODY_BYTES", 1024 * 1024)
# How long the server drains live calls on SIGTERM (DRAIN_DEADLINE_SECONDS, 30 s default).
DRAIN_DEADLINE_S = getattr(settings, "DRAIN_DEADLINE_SECONDS", 30)
# Calls live through the rolling restart, each on an agent of its own (the OpenAI backend,
# played by peers.realtime on a port the processes know from the start).
LIVE_CALLS = 4
# The longest the caller's line may carry nothing while a call moves to another process.
SILENCE_TARGET_S = 1.5


@dataclass
class Site:
    https_url: str
    http_url: str
    ports: list[int]
    systemd: FakeSystemd
    env: dict[str, str]
    static_root: Path
    certificate: Path
    rest_port: int
    realtime_port: int
    directory: Path

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certificate))

    def http(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.tls()),
            timeout=aiohttp.ClientTimeout(total=15),
        )

    @contextmanager
    def showing_logs(self) -> Iterator[None]:
        """Print the servers' logs if the block fails."""
        try:
            yield
        except BaseException:
            print(self.logs())
            raise

    def logs(self) -> str:
        parts = []
        for path in sorted(self.directory.rglob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


def manage(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True
    ).stdout.decode()


def desk_number(n: int) -> str:
    return f"+1415555{n:04d}"


# Agents for the live calls, one per desk, in the site's database.
CREATE_DESKS = f"""
from agents.models import Agent, Backend
for n in range({LIVE_CALLS}):
    Agent.objects.create(
        name=f"Desk {{n}}", phone_number=f"+1415555{{n:04d}}", backend=Backend.OPENAI_REALTIME,
        instructions=f"You are desk number {{n}}.", greeting={GREETING_TEXT!r},
        idle_timeout_seconds=300,  # the restart, however slow, is not an idle line
    )
"""

# What the site's database holds about some calls (their sids on stdin), as JSON.
CALL_RECORDS = """
import json, sys
from calls.models import Call, CallEvent, MediaStream, TranscriptEntry
records = {}
for sid in json.loads(sys.stdin.read()):
    lines = TranscriptEntry.objects.filter(call__sid=sid).order_by("offset_ms", "id")
    events = CallEvent.objects.filter(call__sid=sid)
    records[sid] = {
        "calls": Call.objects.filter(sid=sid).count(),
        "status": list(Call.objects.filter(sid=sid).values_list("status", flat=True)),
        "streams": MediaStream.objects.filter(call__sid=sid).count(),
        "lines": list(lines.values_list("speaker", "text")),
        "handovers": events.filter(kind="stream_handover").count(),
        "resumes": events.filter(kind="stream_resume").count(),
    }
print(json.dumps(records))
"""


def call_records(env: dict[str, str], call_sids: list[str]) -> dict[str, dict]:
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", CALL_RECORDS],
        cwd=ROOT,
        env=env,
        input=json.dumps(call_sids).encode(),
        check=True,
        capture_output=True,
    )
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def site(redis_url, tmp_path_factory) -> Iterator[Site]:
    nginx_binary = require_binary("nginx", why="the deployment recipe's proxy")
    for tool in ("openssl", "curl", "ss"):
        require_binary(tool, why="used by the deployment recipe and its test")
    directory = tmp_path_factory.mktemp("deploy")
    static_root = directory / "static"
    rest_port, realtime_port = free_port(), free_port()
    # The site's own database (a file, or a PostgreSQL database under DATABASE_URL): the
    # suite's test database is flushed by other tests, and may not exist yet.
    database = ScratchDatabase(directory)
    env = server_environment(
        **database.environment,
        REDIS_URL=redis_url,
        STATIC_ROOT=str(static_root),
        TWILIO_API_BASE_URL=f"http://127.0.0.1:{rest_port}",
        OPENAI_API_KEY="",  # the demo agent then uses the local backend
        SECURE_SSL_REDIRECT="true",  # the production default: https must be known
    )
    manage(env, "migrate", "--noinput")
    manage(env, "seed_demo")
    manage(env, "collectstatic", "--noinput")
    manage(env, "shell", "-c", CREATE_DESKS)
    certificate, key = self_signed_certificate(directory, PUBLIC_HOST)

    # The demo agent was seeded on the local backend; the desks talk to the fake OpenAI.
    server_env = {
        **env,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_REALTIME_URL": f"ws://127.0.0.1:{realtime_port}/v1/realtime",
    }
    systemd = FakeSystemd(env=server_env, log_directory=directory)
    ports = [free_port(), free_port()]
    https_port, http_port = free_port(), free_port()
    try:
        for port in ports:
            systemd.start(port)
        for port in ports:
            wait_for_port(port, process=systemd.processes[port])
        systemd.serve()
        rendered = render_site(
            https_port=https_port,
            http_port=http_port,
            upstream_ports=ports,
            static_root=static_root,
            certificate=certificate,
            key=key,
            host=PUBLIC_HOST,
        )
        with nginx(nginx_binary, directory / "nginx", rendered, https_port):
            yield Site(
                https_url=f"https://127.0.0.1:{https_port}",
                http_url=f"http://127.0.0.1:{http_port}",
                ports=ports,
                systemd=systemd,
                env=env,
                static_root=static_root,
                certificate=certificate,
                rest_port=rest_port,
                realtime_port=realtime_port,
                directory=directory,
            )
    finally:
        systemd.close()
        database.drop()


def signed_incoming_call(call_sid: str) -> tuple[dict[str, str], str]:
    params = {
        "AccountSid": settings.TWILIO_ACCOUNT_SID,
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+14155550123",
        "To": DEMO_NUMBER,
    }
    signature = security.compute_signature(settings.PUBLIC_URL + "/twilio/voice/incoming", params)
    return params, signature


def requests_in_log(site: Site, port: int, request_line: str) -> int:
    return site.systemd.log_path(port).read_text(errors="replace").count(request_line)


# --- through nginx --------------------------------------------------------------------------


async def test_signed_webhooks_validate_through_nginx_on_every_process(site):
    async with site.http() as http:
        for number in range(4):  # round-robin: two requests per process
            params, signature = signed_incoming_call(f"CA{number:032d}")
            async with http.post(
                site.https_url + "/twilio/voice/incoming",
                data=params,
                headers={security.SIGNATURE_HEADER: signature},
            ) as response:
                body = await response.text()
                assert response.status == 200, (body, site.logs())
            assert f'url="wss://{PUBLIC_HOST}/twilio/stream"' in body

        params, _ = signed_incoming_call("CA" + "9" * 32)
        wrong = security.compute_signature("https://elsewhere.example.com/", params)
        async with http.post(
            site.https_url + "/twilio/voice/incoming",
            data=params,
            headers={security.SIGNATURE_HEADER: wrong},
        ) as response:
            assert response.status == 403

    for port in site.ports:
        assert requests_in_log(site, port, '"POST /twilio/voice/incoming" 200 ') >= 1


async def test_the_app_knows_requests_through_nginx_came_over_https(site):
    async with site.http() as http:
        # Straight to daphne, without the proxy's X-Forwarded-Proto: redirected to https.
        async with http.get(
            f"http://127.0.0.1:{site.ports[0]}/admin/login/", allow_redirects=False
        ) as response:
            assert response.status == 301
        # Through nginx the request is known to be https: served, with Secure cookies.
        async with http.get(site.https_url + "/admin/login/", allow_redirects=False) as response:
            assert response.status == 200, site.logs()
            assert response.cookies["csrftoken"]["secure"]
        # Plain http at nginx moves to https, for the same host and path.
        async with http.get(site.http_url + "/admin/login/", allow_redirects=False) as response:
            assert response.status == 301
            assert response.headers["Location"] == "https://127.0.0.1/admin/login/"


async def test_a_simulated_call_streams_through_nginx(site):
    # `manage.py simulate_call` as an operator runs it against the public https address,
    # trusting the site's certificate.
    with site.showing_logs():
        await simulated_call_through_nginx(site)


async def simulated_call_through_nginx(site: Site) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "manage.py",
        "simulate_call",
        "--server",
        site.https_url,
        "--rest-port",
        str(site.rest_port),
        "--dtmf",
        "0@1.5s",
        "--duration",
        "20",
        "--no-input",
        "--no-transcript",
        cwd=ROOT,
        env={**site.env, "SSL_CERT_FILE": str(site.certificate)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output = (await asyncio.wait_for(process.communicate(), timeout=60))[0].decode()

    assert process.returncode == 0, output
    assert f"transfer: transferred to {DEMO_TARGET_NUMBER}" in output, output
    assert re.search(r"Errors\s+none", output), output
    frames = re.search(r"(\d+) caller frames sent, (\d+) agent media messages received", output)
    assert frames and int(frames[1]) > 25 and int(frames[2]) > 25, output
    # The media stream's WebSocket went through nginx, upgraded.
    access = (site.directory / "nginx" / "access.log").read_text()
    assert re.search(r'"GET /twilio/stream HTTP/1.1" 101 ', access), access[-2000:]


async def test_a_body_over_the_limit_gets_413_from_nginx(site):
    async with site.http() as http:
        async with http.post(
            site.https_url + "/twilio/voice/incoming",
            data=b"x" * (MAX_BODY_BYTES + 1),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as response:
            assert response.status == 413
            assert "nginx" in await response.text()
        # At the limit the body reaches the app, which refuses it only for its signature.
        async with http.post(
            site.https_url + "/twilio/voice/incoming",
            data=b"x" * MAX_BODY_BYTES,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as response:
            assert response.status == 403


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("calls/live.js", "application/javascript"), ("admin/css/base.css", "text/css")],
)
async def test_static_files_are_served_by_nginx(site, path, content_type):
    async with site.http() as http:
        async with http.get(f"{site.https_url}/static/{path}") as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == content_type
            assert "max-age=604800" in response.headers["Cache-Control"]
            assert await response.read() == (site.static_root / path).read_bytes()
        # daphne itself does not serve them in production.
        async with http.get(
            f"http://127.0.0.1:{site.ports[0]}/static/{path}",
            headers={"X-Forwarded-Proto": "https"},
        ) as response:
            assert response.status == 404


# --- the rolling restart --------------------------------------------------------------------


async def run_rolling_restart(site: Site, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(ROLLING_RESTART),
        *args,
        env=site.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode, out.decode(), err.decode()


async def test_rolling_restart_restarts_each_process_in_turn_while_every_call_goes_on(
    site, settings
):
    settings.TWILIO_API_BASE_URL = f"http://127.0.0.1:{site.rest_port}"
    realtime = FakeRealtimeServer(
        default_reply=Reply(transcript=GREETING_TEXT, audio_ms=300), port=site.realtime_port
    )
    rest = TwilioRestEmulator(auth_token=settings.TWILIO_AUTH_TOKEN, port=site.rest_port)
    with site.showing_logs():
        async with realtime, rest:
            await rolling_restart_during_calls(site, realtime, rest)


async def exchange(session, caller: str, agent: str) -> None:
    await session.speech_started()
    await session.speech_stopped()
    await session.caller_transcript(caller)
    await session.reply(Reply(transcript=agent, audio_ms=400))
    await session.wait_for(lambda: session.active_response is None, timeout=5)


async def live_sessions(realtime, count: int, timeout: float) -> dict[int, object]:
    """Each desk's newest model session once every desk has one that is configured."""
    deadline = time.monotonic() + timeout
    while True:
        newest = {}
        for session in realtime.sessions:
            if session.session_updates and not session.closed:
                newest[desk_of(session)] = session
        if len(newest) == count:
            return newest
        assert time.monotonic() < deadline, f"only desks {sorted(newest)} have a live session"
        await asyncio.sleep(0.05)


async def rolling_restart_during_calls(site: Site, realtime, rest) -> None:
    calls = [
        SimulatedCall(
            server_url=site.https_url,
            to_number=desk_number(n),
            duration_s=300,
            rest=rest,
            log=lambda line, n=n: print(f"call {n}: {line}"),
            ssl_context=site.tls(),
        )
        for n in range(LIVE_CALLS)
    ]
    share_rest_emulator(rest, calls)
    runs = [asyncio.create_task(call.run()) for call in calls]
    try:
        # Every call greeted, then one exchange each, written down before the restart.
        first = await live_sessions(realtime, LIVE_CALLS, timeout=20)
        for n, session in first.items():
            await session.wait_for(lambda s=session: s.responses and s.active_response is None)
            await exchange(session, f"I am calling about booking {n}.", f"Booking {n}: noted.")
        sids = [call.call_sid for call in calls]
        for _ in range(100):
            records = await asyncio.to_thread(call_records, site.env, sids)
            if all(len(r["lines"]) >= 3 for r in records.values()):
                break
            await asyncio.sleep(0.2)

        restarted_at = time.monotonic()
        await rolling_restart_while_asking(site)
        restart_s = time.monotonic() - restarted_at

        # The calls go on, on the new processes, with their history and no second greeting.
        last = await live_sessions(realtime, LIVE_CALLS, timeout=15)
        for n, session in last.items():
            await session.wait_for(lambda s=session: s.messages_created("system"), timeout=5)
            history = session.messages_created("system")[0]
            assert f"Caller: I am calling about booking {n}." in history, history
            assert f"You: Booking {n}: noted." in history
            await exchange(session, "Can I change it?", f"Yes, booking {n} can be changed.")
        for call in calls:
            await call.stream.wait_for(
                lambda c=call: len(c.stream.played) >= 8 * 300, 5, "the last answer heard"
            )
            call.hang_up()
        results = await asyncio.gather(*runs)
    finally:
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)

    for call, result in zip(calls, results, strict=True):
        print(
            f"{call.result.to_number}: {len(result.streams)} streams, longest silence while "
            f"changing streams {max(result.stream_gaps_s, default=0) * 1000:.0f} ms"
        )
    longest = max(gap for result in results for gap in result.stream_gaps_s)
    print(
        f"{LIVE_CALLS} calls through a rolling restart of {len(site.ports)} processes "
        f"({restart_s:.1f} s): the longest silence a caller heard was {longest * 1000:.0f} ms"
    )
    for result in results:
        assert result.errors == [], result.errors
        assert result.end_reason == "caller", result.end_detail
        assert len(result.streams) >= 2  # moved to a new stream at least once
        assert len(result.stream_gaps_s) == len(result.streams) - 1
    assert longest < SILENCE_TARGET_S

    for n in range(LIVE_CALLS):
        sessions = [s for s in realtime.sessions if s.session_updates and desk_of(s) == n]
        assert len(sessions) >= 2
        assert sum(greetings(s) for s in sessions) == 1  # greeted once, on its first stream
        for resumed in sessions[1:]:
            assert "Caller: I am calling about booking" in resumed.messages_created("system")[0]

    records = await asyncio.to_thread(call_records, site.env, [call.call_sid for call in calls])
    for call, result in zip(calls, results, strict=True):
        record = records[call.call_sid]
        assert record["calls"] == 1 and record["status"] == ["completed"], record
        assert record["streams"] == len(result.streams), record
        assert record["handovers"] >= 1 and record["resumes"] >= 1, record
        lines = [tuple(line) for line in record["lines"]]
        assert lines.count(("agent", GREETING_TEXT)) == 1, lines
        assert [speaker for speaker, _ in lines] == [
            "agent",
            "caller",
            "agent",
            "caller",
            "agent",
        ], lines


async def rolling_restart_while_asking(site: Site) -> None:
    before = {port: site.systemd.pid(port) for port in site.ports}
    journal_start = len(site.systemd.journal)
    statuses: list[int | str] = []
    done = asyncio.Event()

    async def keep_asking() -> None:
        async with site.http() as http:
            while not done.is_set():
                try:
                    async with http.get(site.https_url + "/healthz") as response:
                        statuses.append(response.status)
                except aiohttp.ClientError as error:
                    statuses.append(repr(error))
                await asyncio.sleep(0.05)

    asker = asyncio.create_task(keep_asking())
    try:
        code, out, err = await run_rolling_restart(
            site,
            "--cmd",
            f"curl -fsS -X POST {site.systemd.url}/restart/{{port}}",
            "--timeout",
            "60",
            *map(str, site.ports),
        )
    finally:
        done.set()
        await asker

    assert code == 0, out + err
    first, second = site.ports
    journal = [(e.event, e.port) for e in site.systemd.journal[journal_start:]]
    assert journal == [
        ("stopped", first),
        ("started", first),
        ("stopped", second),
        ("started", second),
    ]
    # The second was stopped only once the first was back and answering /healthz.
    lines = out.splitlines()
    back = next(i for i, line in enumerate(lines) if f"voicebot@{first} is back" in line)
    moving_on = next(i for i, line in enumerate(lines) if f"restarting voicebot@{second}" in line)
    assert back < moving_on, out
    for port in site.ports:
        assert site.systemd.pid(port) not in (None, before[port])
        assert f"voicebot@{port} is back: pid {site.systemd.pid(port)} " in out
    # Meanwhile every request through nginx was answered.
    assert len(statuses) >= 20
    assert set(statuses) == {200}, statuses


@pytest.mark.parametrize("fault", ["stop", "break"])
async def test_rolling_restart_names_an_instance_that_does_not_come_back(site, fault):
    """Nothing listens again ("stop"), or something listens that is not healthy ("break")."""
    first, second = site.ports
    try:
        code, out, err = await run_rolling_restart(
            site,
            "--cmd",
            f"curl -fsS -X POST {site.systemd.url}/{fault}/{{port}}",
            "--timeout",
            "3",
            str(first),
            str(second),
        )
        assert code != 0
        assert f"FAILED: voicebot@{first} did not come back" in err
        assert f"127.0.0.1:{first}/healthz" in err
        assert f"not restarted: {second}" in err
        assert site.systemd.journal[-1].port == first  # the second was left alone
    finally:
        site.systemd.stop(first)
        site.systemd.start(first)
        wait_for_port(first, process=site.systemd.processes[first])


async def test_rolling_restart_names_an_old_process_that_does_not_exit(site):
    code, out, err = await run_rolling_restart(
        site, "--cmd", "true", "--timeout", "2", str(site.ports[1])
    )

    assert code != 0
    pid = site.systemd.pid(site.ports[1])
    assert f"voicebot@{site.ports[1]}: the old process (pid {pid}) has not exited" in err


# --- the unit -------------------------------------------------------------------------------


def test_the_systemd_unit_is_valid_and_outlasts_the_drain(tmp_path):
    analyze = require_binary("systemd-analyze", why="checks the shipped systemd unit")
    unit = tmp_path / "voicebot@8001.service"
    unit.write_text(render_unit())

    check = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)

    assert check.returncode == 0 and not check.stderr.strip(), check.stderr
    values = unit_settings()
    assert values["KillSignal"] == "SIGTERM"
    assert int(values["TimeoutStopSec"]) > DRAIN_DEADLINE_S
    assert values["Restart"] == "on-failure"
    assert "--proxy-headers" in values["ExecStart"]
