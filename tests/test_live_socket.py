"""The staff feed at /ws/calls/live: who may connect, and what they are sent."""

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client

from calls import services
from calls.models import CallStatus
from voicebot.asgi import application

from .dashboard_helpers import StreamHolder, make_call, make_staff

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/ws/calls/live"
ORIGIN = b"https://voicebot.example.com"


@sync_to_async
def session_cookie(user: User) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def connect(
    user: User | None = None, *, origin: bytes = ORIGIN
) -> tuple[WebsocketCommunicator, bool]:
    headers = [(b"origin", origin)]
    if user is not None:
        headers.append((b"cookie", f"sessionid={await session_cookie(user)}".encode()))
    communicator = WebsocketCommunicator(application, PATH, headers=headers)
    connected, _ = await communicator.connect()
    return communicator, connected


async def staff(username: str, *codenames: str, **fields: Any) -> User:
    user = await sync_to_async(make_staff)(username, *codenames)
    if fields:
        await User.objects.filter(pk=user.pk).aupdate(**fields)
        await user.arefresh_from_db()
    return user


@pytest.fixture
async def watcher():
    """A connected staff socket that has read its first snapshot."""
    communicator, connected = await connect(await staff("viewer", "view_call"))
    assert connected
    snapshot = await communicator.receive_json_from()
    assert snapshot["event"] == "snapshot"
    yield communicator
    await communicator.disconnect()


# --- who may watch --------------------------------------------------------------------------


async def test_anonymous_visitors_are_refused():
    communicator, connected = await connect()
    assert not connected
    await communicator.disconnect()


async def test_logged_in_users_who_are_not_staff_are_refused():
    user = await staff("customer", "view_call", is_staff=False)
    communicator, connected = await connect(user)
    assert not connected
    await communicator.disconnect()


async def test_staff_who_may_not_view_calls_are_refused():
    communicator, connected = await connect(await staff("accountant"))
    assert not connected
    await communicator.disconnect()


async def test_a_page_from_another_site_is_refused_even_with_a_staff_session():
    user = await staff("viewer", "view_call")
    communicator, connected = await connect(user, origin=b"https://evil.example.net")
    assert not connected
    await communicator.disconnect()


# --- what they see --------------------------------------------------------------------------


async def test_staff_get_a_snapshot_of_the_live_calls(agent):
    live = await sync_to_async(make_call)(agent)
    await sync_to_async(make_call)(agent, status=CallStatus.COMPLETED)
    await sync_to_async(services.transcript_add)(
        call_id=str(live.pk), speaker="agent", text="Hello, how can I help?", offset_ms=300
    )
    communicator, connected = await connect(await staff("viewer", "view_call"))
    assert connected
    snapshot = await communicator.receive_json_from()
    await communicator.disconnect()

    assert snapshot["event"] == "snapshot"
    assert snapshot["now"]
    [call] = snapshot["calls"]
    assert (call["id"], call["sid"], call["agent"]) == (str(live.pk), live.sid, "Front desk")
    assert [line["text"] for line in call["transcript"]] == ["Hello, how can I help?"]
    assert snapshot["targets"] == {
        str(agent.pk): [
            {"name": "reception", "number": "+14155550199", "is_default": True, "mode": "cold"}
        ]
    }


async def test_the_snapshot_carries_each_calls_latest_events_with_the_staff_user(agent):
    live = await sync_to_async(make_call)(agent)
    operator = await staff("alice", "clear_audio")
    async with StreamHolder(live):
        await services.call_clear_audio(call_id=str(live.pk), actor="staff", user=operator)
    communicator, _ = await connect(await staff("viewer", "view_call"))
    snapshot = await communicator.receive_json_from()
    await communicator.disconnect()
    [event] = snapshot["calls"][0]["events"]
    assert (event["kind"], event["actor"]) == ("clear", "staff alice")


async def test_transcript_lines_arrive_as_they_are_written(agent, watcher):
    live = await sync_to_async(make_call)(agent)
    entry = await sync_to_async(services.transcript_add)(
        call_id=str(live.pk), speaker="caller", text="I'd like to book a table", offset_ms=2100
    )
    message = await watcher.receive_json_from()
    assert message == {
        "event": "transcript",
        "call_id": str(live.pk),
        "entry": {
            "id": entry.pk,
            "speaker": "caller",
            "speaker_label": "Caller",
            "text": "I'd like to book a table",
            "offset_ms": 2100,
            "offset_label": "0:02.1",
            "interrupted": False,
            "heard_ms": None,
            "interrupted_label": "",
        },
    }


async def test_who_is_speaking_arrives_as_it_changes(agent, watcher):
    live = await sync_to_async(make_call)(agent)
    await services.call_speaking_broadcast(call_id=str(live.pk), speaker="caller")
    assert await watcher.receive_json_from() == {
        "event": "speaking",
        "call_id": str(live.pk),
        "speaker": "caller",
    }


async def test_the_page_can_ask_for_a_fresh_snapshot(agent, watcher):
    live = await sync_to_async(make_call)(agent)
    await watcher.send_json_to({"action": "resync"})
    message = await watcher.receive_json_from()
    assert message["event"] == "snapshot"
    assert [call["id"] for call in message["calls"]] == [str(live.pk)]


async def test_anything_else_from_the_page_is_ignored(watcher):
    await watcher.send_json_to({"action": "hangup", "call_id": "x"})
    assert await watcher.receive_nothing()


# --- the words: every shape carries the labels the page shows -------------------------------


async def test_a_call_comes_with_the_words_the_page_shows(agent):
    await sync_to_async(make_call)(agent)
    communicator, _ = await connect(await staff("viewer", "view_call"))
    snapshot = await communicator.receive_json_from()
    await communicator.disconnect()
    [call] = snapshot["calls"]
    assert {key: value for key, value in call.items() if key.endswith("label")} == {
        "direction_label": "Inbound",
        "caller_label": "+14155550123",
        "agent_label": "Front desk (+14155550100)",
        "status_label": "In progress",
        "ended_label": "",
        "end_reason_label": "",
        "transferred_label": "",
    }
    assert call["ended"] is False


async def test_a_call_that_ends_is_sent_with_why_in_words(agent, watcher):
    live = await sync_to_async(make_call)(agent)
    await sync_to_async(services.call_status_update)(call_sid=live.sid, status="completed")
    message = await watcher.receive_json_from()
    while message["event"] != "call":
        message = await watcher.receive_json_from()
    call = message["call"]
    assert call["ended"] is True
    assert (call["status_label"], call["end_reason_label"], call["ended_label"]) == (
        "Completed",
        "Caller hung up",
        "Ended: caller hung up",
    )


async def test_a_transcript_line_comes_with_its_offset_and_interruption_in_words(agent, watcher):
    live = await sync_to_async(make_call)(agent)
    await sync_to_async(services.transcript_add)(
        call_id=str(live.pk),
        speaker="agent",
        text="Our hours are",
        offset_ms=3_725_400,
        item_id="i1",
    )
    await watcher.receive_json_from()
    await sync_to_async(services.transcript_interrupt)(
        call_id=str(live.pk), item_id="i1", heard_ms=1300
    )
    entry = (await watcher.receive_json_from())["entry"]
    assert (entry["speaker_label"], entry["offset_label"], entry["interrupted_label"]) == (
        "Agent",
        "1:02:05.4",
        "Interrupted: caller heard 1.3 s",
    )


async def test_an_event_comes_with_its_kind_and_details_in_words(agent, watcher):
    live = await sync_to_async(make_call)(agent)
    await sync_to_async(services.call_event_record)(
        call=live,
        kind="transfer_failed",
        actor="system",
        data={"target": "sales", "number": None, "error": "e" * 200},
    )
    entry = (await watcher.receive_json_from())["entry"]
    assert entry["kind_label"] == "Transfer failed"
    assert entry["details"] == f"target: sales · error: {'e' * 79}…"
    assert entry["actor"] == "System"
