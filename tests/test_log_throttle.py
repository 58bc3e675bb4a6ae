"""LogThrottle: a flood of one kind of event gives `limit` lines, then one summary line."""

import asyncio
import logging

from callmedia.throttle import LogThrottle

logger = logging.getLogger("tests.throttle")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == logger.name]


def test_it_logs_up_to_the_limit_then_summarizes_when_the_window_ends(caplog):
    clock = Clock()
    throttle = LogThrottle(logger, limit=3, window_s=60, clock=clock)
    with caplog.at_level(logging.INFO, logger=logger.name):
        logged = [
            throttle.log(logging.WARNING, "refused_streams", "refused %d", i) for i in range(1000)
        ]
        assert logged == [True] * 3 + [False] * 997
        assert messages(caplog) == ["refused 0", "refused 1", "refused 2"]
        clock.now = 61
        throttle.log(logging.WARNING, "refused_streams", "refused %d", 1000)
    assert messages(caplog)[3:] == [
        "997 more refused streams not logged one by one in the last 60 s",
        "refused 1000",
    ]


def test_each_reason_has_its_own_allowance(caplog):
    throttle = LogThrottle(logger, limit=1, window_s=60, clock=Clock())
    with caplog.at_level(logging.INFO, logger=logger.name):
        for _ in range(5):
            throttle.log(logging.WARNING, "a", "a")
            throttle.log(logging.WARNING, "b", "b")
    assert messages(caplog) == ["a", "b"]


async def test_the_summary_comes_at_the_end_of_the_window_even_if_nothing_follows(caplog):
    throttle = LogThrottle(logger, limit=1, window_s=0.1)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for _ in range(4):
            throttle.log(logging.WARNING, "streams_without_a_start", "closed")
        await asyncio.sleep(0.25)
    assert messages(caplog) == [
        "closed",
        "3 more streams without a start not logged one by one in the last 0.1 s",
    ]
