"""`simulate_call` against a real server: daphne in a subprocess, on production settings.

The server runs as deployed behind a TLS proxy: PUBLIC_URL is https://voicebot.example.com
and the simulator, like the proxy, sends each request to daphne's own address while signing
it over the public URL. Its REST API base URL is the simulator's Twilio emulator.
"""

import io
import socket
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from agents import speech
from agents.backends.local import GOODBYE
from agents.management.commands.seed_demo import DEMO_NUMBER, DEMO_TARGET_NUMBER
from callmedia.audio import ulaw_rms, ulaw_to_wav
from calls.simulator.call import (
    BadSignatureConfiguration,
    NoAgent,
    RestPortInUse,
    ServerUnreachable,
    SimulatedCall,
    parse_action,
    parse_answer,
)
from calls.twiml import unrouted
from peers.ports import free_port

from .servers import ScratchDatabase, daphne, server_environment

ROOT = Path(__file__).resolve().parent.parent
DEMO_GREETING = "Hello, you have reached the voicebot demo. How can I help you today?"


class Server:
    def __init__(
        self, url: str, rest_port: int, database: ScratchDatabase, log: Path, env: dict
    ) -> None:
        self.url, self.rest_port, self.database, self.log = url, rest_port, database, log
        self.env = env  # the server's environment, for a command on the same settings

    def call_row(self, call_sid: str) -> dict:
        [row] = self.database.rows("SELECT * FROM calls_call WHERE sid = %s", [call_sid])
        return row

    def event_kinds(self, call_sid: str) -> list[str]:
        rows = self.database.rows(
            "SELECT e.kind FROM calls_callevent e JOIN calls_call c ON e.call_id = c.id"
            " WHERE c.sid = %s ORDER BY e.created_at, e.id",  # the log's order, as shown
            [call_sid],
        )
        return [row["kind"] for row in rows]


def manage(env: dict, *args: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("server")
    database = ScratchDatabase(directory)
    rest_port = free_port()
    overrides = {
        **database.environment,
        "TWILIO_API_BASE_URL": f"http://127.0.0.1:{rest_port}",
        "OPENAI_API_KEY": "",  # the demo agent then uses the local backend
    }
    env = server_environment(**overrides)
    manage(env, "migrate", "--noinput")
    manage(env, "seed_demo")
    # Without a default agent, other numbers reach nobody (for the "no agent" test).
    manage(
        env,
        "shell",
        "-c",
        "from agents.models import Agent; Agent.objects.update(is_default=False)",
    )
    log = directory / "daphne.log"
    try:
        with daphne(log, **overrides) as url:
            yield Server(url, rest_port, database, log, env)
    finally:
        database.drop()


def simulated(server: Server, **kwargs) -> SimulatedCall:
    lines = kwargs.pop("lines", [])
    return SimulatedCall(
        server_url=server.url,
        to_number=kwargs.pop("to_number", DEMO_NUMBER),
        rest_port=server.rest_port,
        log=lines.append,
        **kwargs,
    )


def ms(text: str) -> int:
    return len(speech.synthesize(text)) // 8


# --- whole calls ----------------------------------------------------------------------------


@pytest.mark.realtime
async def test_the_agent_greets_and_pound_ends_the_call_after_the_goodbye(server, tmp_path):
    recording = tmp_path / "heard.wav"
    call = simulated(
        server, actions=[parse_action("dtmf", "#")], duration_s=30, record_path=recording
    )
    result = await call.run()

    assert result.end_reason == "hangup", result.end_detail
    assert result.rest_requests == ["hangup → 200"]
    assert result.errors == []
    # Both the greeting and the whole goodbye played before the hang-up.
    stream = result.stream
    assert stream["clears"] == 0
    assert stream["marks_echoed"] == stream["marks_sent_by_server"] > 0
    assert result.heard_s * 1000 >= ms(DEMO_GREETING) + ms(GOODBYE) - 100
    with wave.open(io.BytesIO(recording.read_bytes())) as wav:
        assert (wav.getframerate(), wav.getnchannels()) == (8000, 1)
        assert wav.getnframes() == len(result.heard_ulaw)
    assert ulaw_rms(result.heard_ulaw) > 500
    row = server.call_row(result.call_sid)
    assert (row["status"], row["end_reason"]) == ("completed", "agent_ended")
    assert row["duration_seconds"] >= 1
    kinds = server.event_kinds(result.call_sid)
    assert {"answered", "stream_connected", "stream-started", "hangup", "stream-stopped"} <= set(
        kinds
    )


@pytest.mark.realtime
async def test_pressing_0_transfers_to_the_default_target(server):
    call = simulated(server, actions=[parse_action("dtmf", "0@1.5s")], duration_s=20)
    result = await call.run()

    assert result.end_reason == "transfer", result.end_detail
    assert result.transferred_to == DEMO_TARGET_NUMBER
    assert result.stream["clears"] == 1  # the greeting stops at once
    assert result.errors == []
    row = server.call_row(result.call_sid)
    assert (row["end_reason"], row["transferred_to"]) == ("transferred", DEMO_TARGET_NUMBER)
    assert row["status"] == "completed"


@pytest.mark.realtime
@pytest.mark.parametrize("mode", ["cold", "warm"])
async def test_a_transfer_nobody_takes_brings_the_caller_back_to_the_agent(server, mode):
    server.database.execute("UPDATE agents_transfertarget SET mode = %s", [mode])
    try:
        lines: list[str] = []
        call = simulated(
            server,
            actions=[parse_action("dtmf", "0@1.5s")],
            duration_s=6,
            dial_outcome="busy" if mode == "cold" else "reject",
            lines=lines,
        )
        result = await call.run()
    finally:
        server.database.execute("UPDATE agents_transfertarget SET mode = %s", ["cold"])

    assert result.errors == [], result.errors
    assert result.end_reason == "duration", result.end_detail  # still on the line at the end
    assert result.transferred_to is None
    assert len(result.streams) == 2 and len(result.stream_gaps_s) == 1, lines
    assert any("back with the agent" in line for line in lines), lines
    # The summary counts both streams, not just the one the call ended on.
    summary = {line.split()[0]: line for line in result.summary_lines()[1:]}
    assert "(2 streams: " in summary["Duration"], summary
    assert result.streams[0]["marks_echoed"] > 0 and result.streams[1]["marks_echoed"] > 0
    marks = sum(stream["marks_echoed"] for stream in result.streams)
    assert f" {marks} echoed" in summary["Marks"], summary
    if mode == "warm":
        assert any("  whisper to " in line for line in lines), lines
    row = server.call_row(result.call_sid)
    assert row["end_reason"] != "transferred" and row["transferred_to"] == ""
    kinds = server.event_kinds(result.call_sid)
    assert kinds.index("transfer") < kinds.index("transfer_returned") < kinds.index("resumed")


@pytest.mark.realtime
async def test_a_warm_transfer_the_person_accepts_is_theirs(server):
    server.database.execute("UPDATE agents_transfertarget SET mode = %s", ["warm"])
    try:
        lines: list[str] = []
        call = simulated(
            server, actions=[parse_action("dtmf", "0@1.5s")], duration_s=20, lines=lines
        )
        result = await call.run()
    finally:
        server.database.execute("UPDATE agents_transfertarget SET mode = %s", ["cold"])

    assert result.errors == [], result.errors
    assert result.end_reason == "transfer" and result.transferred_to == DEMO_TARGET_NUMBER
    whisper = [line for line in lines if "  whisper to " in line]
    assert whisper and "Press 1" in whisper[0], "\n".join(lines)
    row = server.call_row(result.call_sid)
    assert (row["end_reason"], row["transferred_to"]) == ("transferred", DEMO_TARGET_NUMBER)
    assert "transfer_accepted" in server.event_kinds(result.call_sid)


def test_a_bad_dial_outcome_is_refused_with_the_choices():
    with pytest.raises(CommandError, match="busy, no-answer, failed, accept"):
        call_command("simulate_call", "--dial-outcome", "maybe", "--no-input")


async def test_record_call_saves_the_recording_the_server_asked_twilio_for(server, tmp_path):
    server.database.execute("UPDATE agents_agent SET record_calls = %s", [True])
    try:
        path = tmp_path / "call.wav"
        call = simulated(
            server, actions=[parse_action("dtmf", "#")], duration_s=30, call_recording_path=path
        )
        result = await call.run()
    finally:
        server.database.execute("UPDATE agents_agent SET record_calls = %s", [False])

    assert result.errors == []
    assert result.call_recording == path
    with wave.open(io.BytesIO(path.read_bytes())) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, 8000)
        assert wav.getnframes() > 8000  # over a second: the greeting and the goodbye
    rows = server.database.rows(
        "SELECT r.status, r.channels FROM calls_recording r JOIN calls_call c"
        " ON r.call_id = c.id WHERE c.sid = %s",
        [result.call_sid],
    )
    assert [(row["status"], row["channels"]) for row in rows] == [("completed", 2)]
    assert {"recording_started", "recording_in_progress", "recording_completed"} <= set(
        server.event_kinds(result.call_sid)
    )


@pytest.mark.realtime
@pytest.mark.parametrize("source", ["say", "audio"])
async def test_the_caller_talking_over_the_greeting_cuts_it_off(server, tmp_path, source):
    sentence = "Wait a moment please"
    spec = f"{sentence}@1.5s"
    if source == "audio":
        wav = tmp_path / "caller.wav"
        wav.write_bytes(ulaw_to_wav(speech.synthesize(sentence)))
        spec = f"{wav}@1.5s"
    lines = []
    call = simulated(server, actions=[parse_action(source, spec)], duration_s=6, lines=lines)
    result = await call.run()

    assert result.end_reason == "duration"
    assert result.stream["clears"] == 1
    assert result.marks_after_clear >= 1
    assert result.heard_s < ms(DEMO_GREETING) / 1000  # the greeting was not heard out
    cleared_at = next(index for index, line in enumerate(lines) if "clear:" in line)
    assert any("agent speaking" in line for line in lines[cleared_at:])  # it answered
    assert "barge_in" in server.event_kinds(result.call_sid)


@pytest.mark.realtime
def test_the_command_runs_a_call_and_prints_a_summary(server):
    output = io.StringIO()
    call_command(
        "simulate_call",
        "--server",
        server.url,
        "--rest-port",
        str(server.rest_port),
        "--dtmf",
        "0@1s",
        "--duration",
        "15",
        "--no-input",
        "--no-transcript",
        stdout=output,
    )

    text = output.getvalue()
    assert "Call summary" in text
    assert f"transfer: transferred to {DEMO_TARGET_NUMBER}" in text


# --- outbound calls -------------------------------------------------------------------------

CALLEE = "+14155550142"
VOICEMAIL = "Hello, this is the voicebot demo returning your call. Please call us back."


def simulate_outbound(server: Server, *args: str) -> subprocess.CompletedProcess:
    """`manage.py simulate_call --outbound …` on the server's own settings and database."""
    return subprocess.run(
        [
            sys.executable,
            "manage.py",
            "simulate_call",
            "--server",
            server.url,
            "--rest-port",
            str(server.rest_port),
            "--agent",
            "Demo receptionist",
            "--no-input",
            "--outbound",
            CALLEE,
            *args,
        ],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def summary_row(output: str, name: str) -> str:
    start = output.index("Call summary (outbound)")
    return next(
        line.strip().removeprefix(name).strip()
        for line in output[start:].splitlines()[1:]
        if line.split(maxsplit=1)[:1] == [name]
    )


@pytest.fixture
def agent_leaves_voicemail(server):
    server.database.execute(
        "UPDATE agents_agent SET answering_machine = %s, voicemail_message = %s",
        ["voicemail", VOICEMAIL],
    )
    yield
    server.database.execute("UPDATE agents_agent SET answering_machine = %s", ["off"])


def outbound_call_row(server: Server, output: str) -> dict:
    call_sid = summary_row(output, "Call").split()[0]
    return server.call_row(call_sid)


@pytest.mark.realtime
def test_outbound_a_machine_beeps_and_the_agent_leaves_its_voicemail(
    server, agent_leaves_voicemail
):
    done = simulate_outbound(server, "--answered-by", "machine_end_beep", "--duration", "20")

    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout
    assert summary_row(output, "Answered").startswith("an answering machine")
    assert "the server recorded machine_end_beep" in summary_row(output, "Detection")
    assert summary_row(output, "Voicemail") == f"left ({len(VOICEMAIL)} characters)"
    assert summary_row(output, "End") == "completed: Left a voicemail (the server hung up)"
    heard_s = float(summary_row(output, "Heard").split()[0])
    assert heard_s >= ms(VOICEMAIL) / 1000 - 0.2  # the whole message played to the machine
    assert "server: amd_result" in output  # the server's events, as they happened
    row = outbound_call_row(server, output)
    assert (row["direction"], row["answered_by"], row["end_reason"]) == (
        "outbound",
        "machine_end_beep",
        "voicemail",
    )


@pytest.mark.realtime
def test_outbound_a_person_is_greeted_and_hangs_up(server, agent_leaves_voicemail):
    done = simulate_outbound(server, "--answered-by", "human", "--duration", "6")

    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout
    assert "the server recorded human" in summary_row(output, "Detection")
    assert summary_row(output, "Voicemail") == "none"
    assert summary_row(output, "End").endswith("(the callee hung up)")
    assert float(summary_row(output, "Heard").split()[0]) >= ms(DEMO_GREETING) / 1000 - 0.2
    assert outbound_call_row(server, output)["answered_by"] == "human"


def test_outbound_busy_ends_without_a_stream(server):
    done = simulate_outbound(server, "--answered-by", "busy", "--duration", "5")

    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout
    assert summary_row(output, "Answered") == "nobody: busy"
    assert summary_row(output, "Detection").startswith("not asked")  # the agent does not detect
    assert summary_row(output, "End").startswith("busy:")
    assert summary_row(output, "REST") == "create → 201"
    row = outbound_call_row(server, output)
    assert (row["status"], row["direction"]) == ("busy", "outbound")


def test_outbound_refuses_what_only_an_inbound_call_can_do():
    with pytest.raises(CommandError, match="--dtmf/--say/--audio, --dial-outcome: for inbound"):
        call_command(
            "simulate_call", "--outbound", CALLEE, "--dtmf", "1", "--dial-outcome", "busy"
        )


def test_outbound_refuses_when_this_process_would_reach_another_twilio(settings):
    settings.TWILIO_API_BASE_URL = ""  # Twilio itself
    with pytest.raises(CommandError, match="TWILIO_API_BASE_URL is Twilio itself"):
        call_command(
            "simulate_call", "--outbound", CALLEE, "--rest-port", str(free_port()), "--no-input"
        )


# --- clear errors ---------------------------------------------------------------------------


async def test_it_says_when_the_server_is_not_running():
    call = SimulatedCall(
        server_url=f"http://127.0.0.1:{free_port()}",
        to_number=DEMO_NUMBER,
        rest_port=free_port(),
        log=lambda line: None,
    )

    with pytest.raises(ServerUnreachable, match="Is `make run` running?"):
        await call.run()


def test_the_command_reports_the_server_not_running():
    with pytest.raises(CommandError, match="Is `make run` running?"):
        call_command(
            "simulate_call",
            "--server",
            f"http://127.0.0.1:{free_port()}",
            "--rest-port",
            str(free_port()),
            "--no-input",
            stdout=io.StringIO(),
        )


async def test_it_explains_a_bad_signature_configuration(server):
    call = simulated(server, public_url="https://somewhere-else.example.com")

    with pytest.raises(BadSignatureConfiguration, match="TWILIO_AUTH_TOKEN/PUBLIC_URL differ"):
        await call.run()


async def test_it_says_when_no_agent_answers_the_number(server):
    call = simulated(server, to_number="+14155550111")

    with pytest.raises(NoAgent, match=r"No agent for \+14155550111"):
        await call.run()
    assert server.call_row(call.call_sid)["end_reason"] == "no_agent"


async def test_it_says_when_the_rest_port_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        call = SimulatedCall(to_number=DEMO_NUMBER, rest_port=port, log=lambda line: None)

        with pytest.raises(RestPortInUse, match=f"127.0.0.1:{port}.*in use"):
            await call.run()


# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "spec", "value", "at_s"),
    [
        ("dtmf", "0@5s", "0", 5.0),
        ("dtmf", "#", "#", None),
        ("dtmf", "12#@2.5", "12#", 2.5),
        ("say", "I want a person@3s", "I want a person", 3.0),
        ("say", "meet me @ noon", "meet me @ noon", None),
        ("say", "hello@800ms", "hello", 0.8),
    ],
)
def test_it_parses_scripted_actions(kind, spec, value, at_s):
    action = parse_action(kind, spec)

    assert (action.kind, action.value, action.at_s) == (kind, value, at_s)


@pytest.mark.parametrize(
    ("kind", "spec"), [("dtmf", "a@1s"), ("say", "@3s"), ("audio", "/no/such.wav")]
)
def test_it_refuses_bad_actions(kind, spec):
    with pytest.raises(ValueError):
        parse_action(kind, spec)


def test_a_say_and_hangup_answer_means_no_agent():
    with pytest.raises(NoAgent, match="not taking calls"):
        parse_answer(unrouted())
