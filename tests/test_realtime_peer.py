"""The fake OpenAI Realtime server speaks the GA protocol to a plain websockets client."""

import asyncio
import base64
import json
import time

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from peers.realtime import FRAME_BYTES, FakeRealtimeServer, Reply

AUTH = {"Authorization": "Bearer sk-test"}


@pytest.fixture
async def server():
    async with FakeRealtimeServer() as srv:
        yield srv


async def open_client(server: FakeRealtimeServer, headers=None) -> ClientConnection:
    ws = await connect(
        server.url + "?model=gpt-realtime",
        additional_headers=AUTH if headers is None else headers,
        compression=None,
    )
    created = await recv(ws)
    assert created["type"] == "session.created"
    return ws


async def recv(ws: ClientConnection, timeout: float = 3.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_until(ws: ClientConnection, type_: str, timeout: float = 5.0) -> list[dict]:
    """Events up to and including the first of `type_`."""
    events = []
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await ws.recv())
            events.append(event)
            if event["type"] == type_:
                return events


async def send(ws: ClientConnection, type_: str, **fields) -> None:
    await ws.send(json.dumps({"type": type_, **fields}))


def types(events: list[dict]) -> list[str]:
    return [event["type"] for event in events]


def without_deltas(events: list[dict]) -> list[str]:
    return [t for t in types(events) if not t.endswith(".delta")]


async def test_it_rejects_a_handshake_without_a_bearer_token(server):
    with pytest.raises(InvalidStatus) as caught:
        await connect(server.url + "?model=gpt-realtime", compression=None)
    assert caught.value.response.status_code == 401
    with pytest.raises(InvalidStatus):
        await connect(server.url, additional_headers={"Authorization": "Basic abc"})
    assert [h["status"] for h in server.handshakes] == [401, 401]
    assert server.sessions == []


async def test_it_rejects_the_beta_header(server):
    ws = await connect(
        server.url + "?model=gpt-realtime",
        additional_headers={**AUTH, "OpenAI-Beta": "realtime=v1"},
        compression=None,
    )
    event = await recv(ws)
    assert event["type"] == "error"
    assert event["error"]["code"] == "beta_api_shape_disabled"
    with pytest.raises(ConnectionClosed):
        await recv(ws)
    assert server.sessions[0].rejected_beta


async def test_it_sends_session_created_in_ga_shape_and_records_the_handshake(server):
    ws = await connect(
        server.url + "?model=gpt-realtime", additional_headers=AUTH, compression=None
    )
    created = await recv(ws)
    session = await server.wait_for_session()
    assert created["type"] == "session.created"
    assert created["event_id"]
    assert created["session"]["type"] == "realtime"
    assert created["session"]["id"].startswith("sess_")
    assert created["session"]["model"] == "gpt-realtime"
    assert session.model == "gpt-realtime"
    assert session.path == "/v1/realtime"
    assert session.headers["Authorization"] == "Bearer sk-test"
    await ws.close()


async def test_it_answers_session_update_with_the_merged_session(server):
    ws = await open_client(server)
    await send(
        ws,
        "session.update",
        session={
            "type": "realtime",
            "instructions": "Be brief.",
            "audio": {
                "input": {"format": {"type": "audio/pcmu"}},
                "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
            },
        },
    )
    updated = await recv(ws)
    assert updated["type"] == "session.updated"
    assert updated["session"]["instructions"] == "Be brief."
    assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    # Untouched defaults survive the merge.
    assert updated["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    session = server.sessions[0]
    assert session.session_updates[0]["instructions"] == "Be brief."


async def test_it_rejects_a_beta_shaped_session_update(server):
    ws = await open_client(server)
    await send(ws, "session.update", session={"type": "realtime", "input_audio_format": "x"})
    error = await recv(ws)
    assert error["error"]["code"] == "unknown_parameter"
    assert error["error"]["param"] == "session.input_audio_format"
    await send(ws, "session.update", session={"instructions": "hi"})
    assert (await recv(ws))["error"]["code"] == "missing_required_parameter"
    await send(
        ws,
        "session.update",
        session={"type": "realtime", "audio": {"output": {"format": {"type": "g711_ulaw"}}}},
    )
    assert (await recv(ws))["error"]["code"] == "invalid_value"
    assert server.sessions[0].session_updates == []


@pytest.mark.realtime
async def test_it_streams_a_response_in_real_time(server):
    server.queue_reply(transcript="Hello there, caller.", audio_ms=600)
    ws = await open_client(server)
    await send(ws, "response.create")
    events = await recv_until(ws, "response.done")
    deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    assert len(deltas) == 30
    assert without_deltas(events) == [
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    created, added = events[0], events[1]
    assert added["item"]["id"].startswith("item_")
    assert added["item"]["type"] == "message" and added["item"]["role"] == "assistant"
    first = deltas[0]
    assert set(first) == {
        "type", "event_id", "response_id", "item_id", "output_index", "content_index", "delta"
    }  # fmt: skip
    assert first["response_id"] == created["response"]["id"]
    assert first["item_id"] == added["item"]["id"]
    assert (first["output_index"], first["content_index"]) == (0, 0)
    assert len(base64.b64decode(first["delta"])) == FRAME_BYTES
    assert len({d["event_id"] for d in deltas}) == 30
    transcript = "".join(
        e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta"
    )
    assert transcript == "Hello there, caller."
    done_transcript = next(e for e in events if e["type"].endswith("transcript.done"))
    assert done_transcript["transcript"] == "Hello there, caller."
    assert events[-1]["response"]["status"] == "completed"
    response = server.sessions[0].responses[0]
    assert response.audio_bytes_sent == 600 * 8
    assert response.status == "completed"


@pytest.mark.realtime
async def test_it_paces_deltas_at_fifty_per_second(server):
    server.queue_reply(audio_ms=1000)
    ws = await open_client(server)
    await send(ws, "response.create")
    arrivals = []
    async with asyncio.timeout(5):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == "response.output_audio.delta":
                arrivals.append(time.monotonic())
            if event["type"] == "response.done":
                break
    assert len(arrivals) == 50
    span = arrivals[-1] - arrivals[0]
    assert 0.9 < span < 1.15  # 49 intervals of 20 ms


async def test_it_streams_a_burst_reply_at_once(server):
    server.queue_reply(audio_ms=2000, pace="burst")
    ws = await open_client(server)
    started = time.monotonic()
    await send(ws, "response.create")
    events = await recv_until(ws, "response.done")
    assert time.monotonic() - started < 0.5
    assert types(events).count("response.output_audio.delta") == 100


async def test_it_rejects_a_truncate_beyond_the_audio_sent(server):
    server.queue_reply(audio_ms=200, pace="burst")
    ws = await open_client(server)
    await send(ws, "response.create")
    events = await recv_until(ws, "response.done")
    item_id = events[1]["item"]["id"]
    await send(ws, "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=250)
    error = await recv(ws)
    assert error["type"] == "error"
    assert "already shorter than" in error["error"]["message"]
    await send(ws, "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=120)
    truncated = await recv(ws)
    assert truncated == {**truncated, "type": "conversation.item.truncated", "audio_end_ms": 120}
    session = server.sessions[0]
    assert [t["audio_end_ms"] for t in session.truncations] == [120]
    # The item is now 120 ms long.
    await send(ws, "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=150)
    assert "already shorter than" in (await recv(ws))["error"]["message"]


async def test_it_rejects_a_truncate_before_any_audio(server):
    server.queue_reply(transcript="Silent.", audio_ms=0)
    ws = await open_client(server)
    await send(ws, "response.create")
    events = await recv_until(ws, "response.done")
    item_id = events[1]["item"]["id"]
    await send(ws, "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=0)
    error = await recv(ws)
    assert error["type"] == "error"
    await send(ws, "conversation.item.truncate", item_id="item_x", content_index=0, audio_end_ms=0)
    assert (await recv(ws))["type"] == "error"
    assert server.sessions[0].truncations == []


async def test_it_stops_deltas_when_the_client_cancels(server):
    server.queue_reply(audio_ms=3000)
    ws = await open_client(server)
    await send(ws, "response.create")
    events = []
    while types(events).count("response.output_audio.delta") < 5:
        events.append(await recv(ws))
    await send(ws, "response.cancel")
    after = await recv_until(ws, "response.done")
    done = after[-1]
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    assert without_deltas(after)[-2:] == ["response.output_item.done", "response.done"]
    assert after[-2]["item"]["status"] == "incomplete"
    with pytest.raises(TimeoutError):
        await recv(ws, timeout=0.15)  # nothing more, and certainly no delta
    response = server.sessions[0].responses[0]
    assert response.status == "cancelled"
    assert response.audio_bytes_sent < 3000 * 8
    assert len(server.sessions[0].cancels) == 1


async def test_it_reports_a_cancel_with_no_active_response(server):
    ws = await open_client(server)
    await send(ws, "response.cancel")
    error = await recv(ws)
    assert error["error"]["code"] == "response_cancel_not_active"


@pytest.mark.realtime
async def test_it_rejects_a_second_response_create_while_one_is_active(server):
    server.queue_reply(audio_ms=1000)
    ws = await open_client(server)
    await send(ws, "response.create")
    await send(ws, "response.create")
    events = await recv_until(ws, "error")
    assert events[-1]["error"]["code"] == "conversation_already_has_active_response"
    await recv_until(ws, "response.done")
    assert len(server.sessions[0].responses) == 1


async def test_it_emits_a_function_call_after_the_audio(server):
    server.queue_reply(audio_ms=100, pace="burst", function_call=("end_call", {"reason": "bye"}))
    ws = await open_client(server)
    await send(ws, "response.create")
    events = await recv_until(ws, "response.done")
    assert without_deltas(events)[7:] == [
        "response.output_item.added",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.done",
    ]
    added = events[types(events).index("response.output_item.added", 2)]
    assert added["item"]["type"] == "function_call"
    assert added["item"]["call_id"].startswith("call_")
    args_done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert args_done["name"] == "end_call"
    assert args_done["call_id"] == added["item"]["call_id"]
    assert args_done["item_id"] == added["item"]["id"]
    assert json.loads(args_done["arguments"]) == {"reason": "bye"}
    assert [o["type"] for o in events[-1]["response"]["output"]] == ["message", "function_call"]

    item = {"type": "function_call_output", "call_id": args_done["call_id"], "output": "ok"}
    await send(ws, "conversation.item.create", item=item)
    assert types([await recv(ws), await recv(ws)]) == [
        "conversation.item.added",
        "conversation.item.done",
    ]
    session = server.sessions[0]
    assert session.function_outputs == [item]
    await send(ws, "conversation.item.create", item={**item, "call_id": "call_unknown"})
    assert (await recv(ws))["type"] == "error"


async def test_speech_started_cancels_the_active_response(server):
    server.queue_reply(audio_ms=3000)
    ws = await open_client(server)
    session = await server.wait_for_session()
    await send(ws, "response.create")
    await recv_until(ws, "response.output_audio.delta")
    await session.speech_started(audio_start_ms=1234)
    events = await recv_until(ws, "response.done")
    assert events[0]["type"] in ("input_audio_buffer.speech_started", "response.output_audio.delta")
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    assert started["audio_start_ms"] == 1234
    assert started["item_id"].startswith("item_")
    assert events[-1]["response"]["status"] == "cancelled"
    assert events[-1]["response"]["status_details"]["reason"] == "turn_detected"
    assert session.active_response is None


async def test_speech_started_can_leave_the_response_running(server):
    server.queue_reply(audio_ms=200)
    ws = await open_client(server)
    session = await server.wait_for_session()
    await send(ws, "response.create")
    await recv_until(ws, "response.output_audio.delta")
    await session.speech_started(interrupt=False)
    events = await recv_until(ws, "response.done")
    assert events[-1]["response"]["status"] == "completed"


async def test_drop_makes_the_client_see_a_connection_error(server):
    ws = await open_client(server)
    session = await server.wait_for_session()
    await session.drop()
    with pytest.raises(ConnectionClosedError) as caught:
        await recv(ws)
    assert caught.value.rcvd is None  # no close frame
    assert session.closed


async def test_expire_sends_session_expired_and_closes(server):
    ws = await open_client(server)
    session = await server.wait_for_session()
    await session.expire()
    assert (await recv(ws))["error"]["code"] == "session_expired"
    with pytest.raises(ConnectionClosed):
        await recv(ws)


async def test_server_triggers_reach_the_client(server):
    ws = await open_client(server)
    session = await server.wait_for_session()
    await session.speech_started()
    await session.speech_stopped()
    await session.caller_transcript("I need a taxi.")
    await session.send_error("some_code", "Something odd.")
    await session.send_rate_limits()
    events = [await recv(ws) for _ in range(5)]
    assert types(events) == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed",
        "error",
    ]
    transcript = events[3]
    assert transcript["item_id"] == events[0]["item_id"]
    assert (transcript["content_index"], transcript["transcript"]) == (0, "I need a taxi.")
    assert events[4]["error"] == {**events[4]["error"], "code": "some_code"}
    assert (await recv(ws))["type"] == "rate_limits.updated"

    response = await session.reply(transcript="Sure.", audio_ms=100, pace="burst")
    events = await recv_until(ws, "response.done")
    assert events[-1]["response"]["id"] == response.id
    assert response.origin == "server"


async def test_it_counts_appended_audio_without_keeping_it(server):
    ws = await open_client(server)
    session = await server.wait_for_session()
    payload = base64.b64encode(bytes(FRAME_BYTES)).decode()
    for _ in range(10):
        await send(ws, "input_audio_buffer.append", audio=payload)
    await session.wait_for(lambda: session.append_count == 10)
    assert session.appended_bytes == 10 * FRAME_BYTES
    assert session.client_events == []


async def test_a_default_reply_may_have_no_audio(server):
    server.default_reply = Reply(transcript="", audio_ms=0)
    ws = await open_client(server)
    await send(ws, "response.create")
    events = await recv_until(ws, "response.done")
    assert types(events) == ["response.created", "response.done"]
    assert events[-1]["response"]["output"] == []


async def test_it_rejects_an_unknown_client_event(server):
    ws = await open_client(server)
    await send(ws, "response.audio.delta", event_id="evt_1")
    error = await recv(ws)
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["event_id"] == "evt_1"


async def test_wait_for_session_hands_out_sessions_in_order(server):
    first = await open_client(server)
    second = await open_client(server)
    assert await server.wait_for_session() is server.sessions[0]
    assert await server.wait_for_session() is server.sessions[1]
    with pytest.raises(TimeoutError):
        await server.wait_for_session(timeout=0.05)
    await first.close()
    await second.close()


async def test_auto_reply_mode_answers_on_its_own():
    reply = Reply(transcript="Auto.", audio_ms=60, pace="burst")
    async with FakeRealtimeServer(auto_reply_every_ms=50, default_reply=reply) as server:
        ws = await open_client(server)
        events = await recv_until(ws, "response.done")
        assert types(events)[:3] == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
        ]
        assert events[-1]["response"]["status"] == "completed"


async def test_stopping_mid_response_closes_the_client_quietly(caplog):
    server = await FakeRealtimeServer(default_reply=Reply(audio_ms=5000)).start()
    ws = await open_client(server)
    await send(ws, "response.create")
    await recv_until(ws, "response.output_audio.delta")
    await server.stop()
    with pytest.raises(ConnectionClosed):
        while True:
            await recv(ws)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
