"""callmedia's async building blocks: the outbox and the task set."""

import asyncio
import logging

from callmedia.outbox import Outbox
from callmedia.tasks import TaskSet


class Peer:
    """A socket that takes `delay_s` to write each message."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.received: list = []

    async def send(self, message) -> None:
        await asyncio.sleep(self.delay_s)
        self.received.append(message)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_writer_sends_what_is_posted_in_order():
    peer = Peer()
    outbox = Outbox(peer.send, name="test")
    outbox.start()
    for n in range(3):
        outbox.post(n)
    await settle()
    assert peer.received == [0, 1, 2]
    await outbox.stop()


async def test_clear_drops_what_has_not_left_yet():
    peer = Peer(delay_s=0.01)
    outbox = Outbox(peer.send, name="test")
    outbox.start()
    for n in range(5):
        outbox.post(n)
    await asyncio.sleep(0.015)  # the first message is out, the second on its way
    outbox.clear()
    outbox.post("clear")
    await asyncio.sleep(0.05)
    assert peer.received == [0, 1, "clear"]
    await outbox.stop()


async def test_held_messages_wait_for_flush_and_leave_in_the_flushing_task():
    peer = Peer()
    outbox = Outbox(peer.send, name="test")
    outbox.start()
    outbox.hold()
    outbox.post("a")
    outbox.post("b")
    await settle()
    assert peer.received == []
    await outbox.flush()
    assert peer.received == ["a", "b"]
    await outbox.stop()


async def test_a_batch_outbox_sends_everything_queued_at_once_and_close_drains_it():
    peer = Peer(delay_s=0.01)
    outbox = Outbox(peer.send, name="test", batch=True)
    outbox.start()
    outbox.post(1)
    await asyncio.sleep(0)  # the writer takes the first one alone
    outbox.post(2)
    outbox.post(3)
    assert await outbox.close(timeout_s=1.0)
    assert peer.received == [[1], [2, 3]]


async def test_a_failed_send_drops_the_queue_and_the_writer_goes_on():
    sent = []

    async def send(message):
        if message == "boom":
            raise ConnectionError("peer gone")
        sent.append(message)

    outbox = Outbox(send, name="test")
    outbox.start()
    outbox.post("boom")
    outbox.post("lost")
    await settle()
    outbox.post("later")
    await settle()
    assert sent == ["later"]
    await outbox.stop()


async def test_cancelling_a_task_set_spares_the_task_that_asks():
    tasks = TaskSet("Call test")
    other = tasks.spawn(asyncio.sleep(10), "other")
    finished = []

    async def ending():
        await tasks.close()
        finished.append(True)

    mine = tasks.spawn(ending(), "mine")
    await asyncio.wait({mine}, timeout=1.0)
    assert finished == [True]
    assert other.cancelled()
    assert len(tasks) == 0


async def test_a_failed_task_is_logged_with_its_owner_and_name(caplog):
    tasks = TaskSet("Call CA1")

    async def fail():
        raise ValueError("no")

    with caplog.at_level(logging.ERROR, logger="callmedia.tasks"):
        task = tasks.spawn(fail(), "bad-task")
        await asyncio.gather(task, return_exceptions=True)
        await settle()
    assert "Call CA1: task bad-task failed" in caplog.text


async def test_a_task_set_cancels_tasks_by_name():
    tasks = TaskSet("Stream test")
    sender = tasks.spawn(asyncio.sleep(10), "sender")
    receiver = tasks.spawn(asyncio.sleep(10), "receiver")

    await tasks.close("sender")

    assert sender.cancelled()
    assert not receiver.done()
    assert len(tasks) == 1
    await tasks.close()
    assert receiver.cancelled()


async def test_a_task_set_hands_each_failure_to_its_owner():
    failures = []
    tasks = TaskSet("Stream test", failure_level=logging.DEBUG, on_failure=failures.append)

    async def fail():
        raise ValueError("no")

    task = tasks.spawn(fail(), "bad-task")
    tasks.spawn(asyncio.sleep(0), "fine")
    await asyncio.gather(task, return_exceptions=True)
    await settle()
    assert [repr(error) for error in failures] == [repr(ValueError("no"))]


async def test_closing_a_stopped_outbox_returns_at_once():
    peer = Peer()
    outbox = Outbox(peer.send, name="test")
    outbox.start()
    await outbox.stop()

    assert await asyncio.wait_for(outbox.close(timeout_s=1.0), 0.5)
