"""The OpenAI Realtime backend speaks the GA protocol and normalizes what the model says."""

import base64
import json
import sys

import pytest

from agents.backends import backend_for
from agents.backends.base import (
    AgentConfig,
    AgentTranscript,
    AudioDelta,
    AudioDone,
    BackendClosed,
    BackendError,
    BackendUnavailable,
    ResponseCreated,
    ResponseDone,
    SpeechStarted,
    TargetConfig,
    ToolCall,
)
from agents.backends.openai_realtime import (
    OpenAIRealtimeBackend,
    b64_decoded_length,
    session_config,
)
from agents.tools import tools_for
from peers.realtime import FakeRealtimeServer

TARGETS = (
    TargetConfig(name="reception", description="The front desk", is_default=True),
    TargetConfig(name="sales", description="Quotes and prices", is_default=False),
)


def config(**fields) -> AgentConfig:
    values = {
        "id": 1,
        "name": "Front desk",
        "instructions": "Be brief.",
        "greeting": "",
        "voice": "marin",
        "model": "gpt-realtime",
        "backend": "openai_realtime",
        "transfer_digit": "0",
        "max_call_seconds": 900,
        "idle_timeout_seconds": 30,
        "targets": TARGETS,
        **fields,
    }
    return AgentConfig(**values)


def backend(**fields) -> OpenAIRealtimeBackend:
    return OpenAIRealtimeBackend(
        config(**fields), call_sid="CA1", url="ws://127.0.0.1:9/v1/realtime", api_key="sk-test"
    )


def server_event(type_: str, **fields) -> str:
    return json.dumps({"type": type_, "event_id": "event_1", **fields})


# --- configuration --------------------------------------------------------------------------


def test_the_session_update_is_the_ga_shape():
    session = session_config(config(voice="cedar"))
    assert session["type"] == "realtime"
    assert session["output_modalities"] == ["audio"]
    assert session["audio"] == {
        "input": {
            "format": {"type": "audio/pcmu"},
            "transcription": {"model": "gpt-4o-transcribe"},
            "turn_detection": {"type": "server_vad", "interrupt_response": True},
        },
        "output": {"format": {"type": "audio/pcmu"}, "voice": "cedar"},
    }
    assert session["tool_choice"] == "auto"
    assert not {"modalities", "voice", "input_audio_format", "turn_detection"} & set(session)


def test_the_transfer_tool_lists_the_targets_with_their_descriptions():
    transfer = tools_for(config())[1]
    assert transfer["name"] == "transfer_to_human"
    assert transfer["parameters"]["properties"]["target"]["enum"] == ["reception", "sales"]
    assert "- sales: Quotes and prices" in transfer["description"]
    assert "- reception: The front desk (the default)" in transfer["description"]
    assert transfer["parameters"]["required"] == ["target", "reason"]


def test_an_agent_without_targets_gets_no_transfer_tool():
    assert [tool["name"] for tool in tools_for(config(targets=()))] == ["end_call"]


def test_the_local_backend_is_loaded_lazily_and_its_absence_is_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "agents.backends.local", None)  # import fails
    with pytest.raises(BackendUnavailable, match="local backend is not available"):
        backend_for(config(backend="local"), call_sid="CA1")
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        backend_for(config(backend="carrier-pigeon"), call_sid="CA1")


# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [160, 161, 162, 1])
def test_audio_deltas_carry_the_payload_as_is_and_its_decoded_size(size):
    payload = base64.b64encode(bytes(range(256))[:size] * 1).decode()
    event = backend().parse(
        server_event(
            "response.output_audio.delta",
            response_id="resp_1",
            item_id="item_1",
            output_index=0,
            content_index=0,
            delta=payload,
        )
    )
    assert event == AudioDelta("item_1", "resp_1", payload, size)
    assert b64_decoded_length(payload) == size


def test_server_events_are_normalized():
    parse = backend().parse
    assert parse(server_event("response.created", response={"id": "resp_1"})) == ResponseCreated(
        "resp_1"
    )
    assert parse(
        server_event("response.output_audio.done", item_id="item_1", response_id="resp_1")
    ) == AudioDone("item_1", "resp_1")
    assert parse(
        server_event("response.output_audio_transcript.done", item_id="item_1", transcript="Hi.")
    ) == AgentTranscript("item_1", "Hi.")
    assert parse(
        server_event(
            "response.function_call_arguments.done",
            call_id="call_1",
            name="end_call",
            arguments='{"reason": "done"}',
        )
    ) == ToolCall("call_1", "end_call", {"reason": "done"})
    assert parse(
        server_event("response.function_call_arguments.done", call_id="c", name="x", arguments="{")
    ) == ToolCall("c", "x", {})
    assert parse(
        server_event("response.done", response={"id": "resp_1", "status": "cancelled"})
    ) == ResponseDone("resp_1", "cancelled")
    started = parse(server_event("input_audio_buffer.speech_started", item_id="item_2"))
    assert isinstance(started, SpeechStarted) and started.received_at > 0
    assert parse(server_event("rate_limits.updated", rate_limits=[])) is None


def error_event(code, message="", type_="invalid_request_error", event_id=None) -> str:
    error = {"type": type_, "code": code, "message": message, "param": None, "event_id": event_id}
    return server_event("error", error=error)


@pytest.mark.parametrize(
    "raw",
    [
        error_event("conversation_already_has_active_response"),
        error_event("response_cancel_not_active"),
        error_event("invalid_value", "Audio content of 120ms is already shorter than 150ms"),
        error_event(
            "unsupported_content_type", "Only model output audio", event_id="vb_truncate_3"
        ),
    ],
)
def test_benign_races_are_not_reported(raw):
    assert backend().parse(raw) is None


def test_errors_are_fatal_only_when_the_session_cannot_go_on():
    parse = backend().parse
    assert parse(error_event("session_expired", "60 minutes")) == BackendError(
        "session_expired", "60 minutes", fatal=True, retryable=True
    )
    assert parse(error_event(None, "oops", type_="server_error")).fatal
    assert not parse(error_event(None, "oops", type_="server_error")).retryable
    assert not parse(error_event("invalid_value", "odd")).fatal


# --- against the fake GA server -------------------------------------------------------------


async def test_it_connects_configures_and_streams_normalized_events():
    async with FakeRealtimeServer() as server:
        server.queue_reply(transcript="Hello.", audio_ms=100, pace="burst")
        realtime = OpenAIRealtimeBackend(
            config(), call_sid="CA1", url=server.url, api_key="sk-test"
        )
        await realtime.connect()
        session = await server.wait_for_session()
        realtime.send_audio(base64.b64encode(b"\xff" * 160).decode())
        realtime.create_response()
        events = []
        async for event in realtime.events():
            events.append(event)
            if isinstance(event, ResponseDone):
                break
        await realtime.close()

    assert session.model == "gpt-realtime"
    assert session.headers["Authorization"] == "Bearer sk-test"
    assert "OpenAI-Beta" not in session.headers
    assert session.session_updates[0]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert session.appended_bytes == 160
    deltas = [e for e in events if isinstance(e, AudioDelta)]
    assert sum(d.nbytes for d in deltas) == 800
    assert [type(e) for e in events if not isinstance(e, AudioDelta)][-3:] == [
        AudioDone,
        AgentTranscript,
        ResponseDone,
    ]
    assert session.errors_sent == []


async def test_caller_audio_never_overtakes_what_is_queued_before_it():
    # Caller frames are written at once while nothing is queued; a frame sent after an
    # event the writer task has not written yet must wait behind it.
    frame = base64.b64encode(b"\xff" * 160).decode()
    async with FakeRealtimeServer() as server:
        realtime = OpenAIRealtimeBackend(config(), call_sid="CA1", url=server.url, api_key="k")
        await realtime.connect()
        session = await server.wait_for_session()
        realtime.send_audio(frame)
        realtime.add_context("The caller pressed 5.")
        realtime.send_audio(frame)
        realtime.send_audio(frame)

        def types() -> list[str]:
            return [event["type"] for event in session.client_events]

        await session.wait_for(
            lambda: session.append_count == 3 and "conversation.item.create" in types()
        )
        await realtime.close()

    context = types().index("conversation.item.create")
    assert session.appends_before[context] == 1
    assert session.appended_bytes == 3 * 160


async def test_a_dropped_connection_is_reported_once_and_our_own_close_is_not():
    async with FakeRealtimeServer() as server:
        realtime = OpenAIRealtimeBackend(config(), call_sid="CA1", url=server.url, api_key="k")
        await realtime.connect()
        session = await server.wait_for_session()
        await session.drop()
        assert [e async for e in realtime.events()][-1:] == [
            BackendClosed("connection to the model lost (no close frame received or sent)")
        ]

        ours = OpenAIRealtimeBackend(config(), call_sid="CA2", url=server.url, api_key="k")
        await ours.connect()
        await server.wait_for_session()
        await ours.close()
        assert [e async for e in ours.events() if isinstance(e, BackendClosed)] == []


async def test_connecting_without_a_key_or_a_server_is_unavailable():
    with pytest.raises(BackendUnavailable, match="OPENAI_API_KEY"):
        await OpenAIRealtimeBackend(config(), call_sid="CA1", url="ws://x", api_key="").connect()
    with pytest.raises(BackendUnavailable, match="cannot connect"):
        await backend().connect()
