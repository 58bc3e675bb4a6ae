import pytest

from callmedia.playback import UNMARKED_SLACK_MS, PlaybackTracker, Segment

# 8 bytes of mu-law per ms: these helpers keep the arithmetic in the tests readable.


def ms(n: int) -> int:
    return n * 8


def send_segment(tracker: PlaybackTracker, item_id: str, duration_ms: int, now_ms: int) -> str:
    tracker.audio_sent(item_id, ms(duration_ms), now_ms)
    name = tracker.close_segment()
    assert name is not None
    return name


def test_a_tracker_with_nothing_sent_has_played_everything():
    tracker = PlaybackTracker()
    assert tracker.all_played
    assert tracker.pending_marks == ()
    assert tracker.close_segment() is None
    assert tracker.heard_ms("item", 1000) == 0
    assert not tracker.is_audible(0)


def test_an_echoed_segment_counts_as_fully_heard():
    tracker = PlaybackTracker()
    name = send_segment(tracker, "a", 200, now_ms=0)

    segment = tracker.mark_received(name, now_ms=210)

    assert isinstance(segment, Segment)
    assert segment.name == name
    assert segment.parts == [("a", ms(200))]
    assert segment.played_at_ms == 210
    assert tracker.heard_ms("a", 210) == 200
    assert tracker.heard_ms("a", 10_000) == 200


def test_an_echo_proves_the_segment_played_even_if_the_clock_lags():
    # Inbound timestamps reach us late; the echo is the authority.
    tracker = PlaybackTracker()
    name = send_segment(tracker, "a", 200, now_ms=0)
    assert tracker.heard_ms("a", 120) == 120

    tracker.mark_received(name, now_ms=120)

    assert tracker.heard_ms("a", 120) == 200


def test_it_interpolates_within_the_segment_that_is_playing():
    tracker = PlaybackTracker()
    send_segment(tracker, "a", 200, now_ms=1000)

    assert tracker.heard_ms("a", 900) == 0
    assert tracker.heard_ms("a", 1000) == 0
    assert tracker.heard_ms("a", 1050) == 50
    assert tracker.heard_ms("a", 1199) == 199


def test_heard_is_clamped_to_the_bytes_sent():
    tracker = PlaybackTracker()
    send_segment(tracker, "a", 10, now_ms=0)

    assert tracker.heard_ms("a", 5000) == 10
    assert tracker.sent_ms("a") == 10


def test_partial_ms_are_rounded_down_so_truncation_never_exceeds_what_was_sent():
    tracker = PlaybackTracker()
    tracker.audio_sent("a", 100, now_ms=0)  # 12.5 ms

    assert tracker.sent_ms("a") == 12
    assert tracker.heard_ms("a", 1000) == 12


def test_a_segment_sent_while_another_plays_starts_after_it():
    tracker = PlaybackTracker()
    send_segment(tracker, "a", 100, now_ms=0)
    send_segment(tracker, "b", 100, now_ms=20)

    assert tracker.heard_ms("a", 150) == 100
    assert tracker.heard_ms("b", 150) == 50


def test_the_next_segment_is_re_anchored_at_the_previous_echo():
    tracker = PlaybackTracker()
    first = send_segment(tracker, "a", 100, now_ms=0)
    send_segment(tracker, "b", 100, now_ms=0)

    # Twilio finished "a" 50 ms later than the estimate, so "b" started later too.
    tracker.mark_received(first, now_ms=150)

    assert tracker.heard_ms("b", 200) == 50


def test_audio_cannot_play_before_it_was_sent():
    # The model streaming slower than real time leaves gaps in Twilio's playback.
    tracker = PlaybackTracker()
    tracker.audio_sent("a", ms(10), now_ms=0)
    tracker.audio_sent("a", ms(10), now_ms=50)

    assert tracker.heard_ms("a", 30) == 10
    assert tracker.heard_ms("a", 55) == 15


def test_it_tracks_several_items_in_one_segment_in_send_order():
    tracker = PlaybackTracker()
    tracker.audio_sent("a", ms(50), now_ms=0)
    tracker.audio_sent("b", ms(50), now_ms=0)
    name = tracker.close_segment()

    assert tracker.heard_ms("a", 70) == 50
    assert tracker.heard_ms("b", 70) == 20
    segment = tracker.mark_received(name, now_ms=100)
    assert segment.parts == [("a", ms(50)), ("b", ms(50))]
    assert (tracker.heard_ms("a", 100), tracker.heard_ms("b", 100)) == (50, 50)


def test_consecutive_sends_of_one_item_merge_into_one_part():
    tracker = PlaybackTracker()
    tracker.audio_sent("a", 80, now_ms=0)
    tracker.audio_sent("a", 80, now_ms=0)
    tracker.audio_sent("b", 80, now_ms=0)
    tracker.audio_sent("a", 80, now_ms=0)
    name = tracker.close_segment()

    segment = tracker.mark_received(name, now_ms=100)

    assert segment.parts == [("a", 160), ("b", 80), ("a", 80)]
    assert segment.nbytes == 320


def test_clear_freezes_heard_and_reports_the_items_it_cut():
    tracker = PlaybackTracker()
    done = send_segment(tracker, "a", 100, now_ms=0)
    tracker.mark_received(done, now_ms=100)
    send_segment(tracker, "b", 200, now_ms=100)

    cut = tracker.cleared(now_ms=160)

    assert cut == {"b": 60}
    assert tracker.heard_ms("b", 160) == 60
    assert tracker.heard_ms("b", 10_000) == 60
    assert tracker.heard_ms("a", 10_000) == 100
    assert tracker.sent_ms("b") == 200


def test_echoes_that_follow_a_clear_are_not_taken_as_heard():
    tracker = PlaybackTracker()
    first = send_segment(tracker, "a", 200, now_ms=0)
    second = send_segment(tracker, "a", 200, now_ms=0)

    tracker.cleared(now_ms=50)

    assert tracker.pending_marks == ()
    assert tracker.mark_received(first, now_ms=55) is None
    assert tracker.mark_received(second, now_ms=55) is None
    assert tracker.heard_ms("a", 55) == 50
    assert tracker.all_played


def test_clear_counts_the_item_that_is_still_being_sent():
    tracker = PlaybackTracker()
    tracker.audio_sent("a", ms(300), now_ms=0)

    assert tracker.cleared(now_ms=40) == {"a": 40}
    # The open segment is gone: there is no mark left to send for it.
    assert tracker.close_segment() is None
    assert tracker.heard_ms("a", 500) == 40


def test_clear_leaves_out_items_that_had_fully_played():
    tracker = PlaybackTracker()
    send_segment(tracker, "a", 50, now_ms=0)
    send_segment(tracker, "b", 100, now_ms=0)

    assert tracker.cleared(now_ms=100) == {"b": 50}


def test_audio_after_a_clear_plays_from_when_it_is_sent():
    tracker = PlaybackTracker()
    send_segment(tracker, "a", 1000, now_ms=0)
    tracker.cleared(now_ms=100)

    name = send_segment(tracker, "b", 100, now_ms=120)

    assert tracker.heard_ms("b", 150) == 30
    assert tracker.pending_marks == (name,)
    assert tracker.mark_received(name, now_ms=220).name == name


def test_all_played_waits_for_every_echo():
    tracker = PlaybackTracker()
    tracker.audio_sent("a", ms(20), now_ms=0)
    assert not tracker.all_played  # sent, but its mark is not sent yet

    first = tracker.close_segment()
    second = send_segment(tracker, "b", 20, now_ms=0)
    assert not tracker.all_played
    assert tracker.pending_marks == (first, second)

    tracker.mark_received(first, now_ms=20)
    assert not tracker.all_played
    tracker.mark_received(second, now_ms=40)
    assert tracker.all_played


def test_a_later_echo_also_settles_the_segments_before_it():
    tracker = PlaybackTracker()
    send_segment(tracker, "a", 100, now_ms=0)
    second = send_segment(tracker, "b", 100, now_ms=0)

    assert tracker.mark_received(second, now_ms=200).name == second

    assert tracker.pending_marks == ()
    assert tracker.heard_ms("a", 200) == 100


def test_unknown_marks_are_ignored():
    tracker = PlaybackTracker()
    name = send_segment(tracker, "a", 100, now_ms=0)

    assert tracker.mark_received("greeting-done", now_ms=50) is None

    assert tracker.pending_marks == (name,)
    assert tracker.heard_ms("a", 50) == 50


def test_the_open_segment_name_is_not_accepted_before_its_mark_is_sent():
    tracker = PlaybackTracker()
    send_segment(tracker, "a", 10, now_ms=0)
    tracker.audio_sent("a", ms(10), now_ms=0)

    assert tracker.mark_received("seg-2", now_ms=5) is None
    assert not tracker.all_played


def test_mark_names_are_short_unique_and_prefixed():
    tracker = PlaybackTracker(mark_prefix="r")
    names = [send_segment(tracker, "a", 10, now_ms=0) for _ in range(3)]

    assert names == ["r-1", "r-2", "r-3"]


def test_empty_sends_do_not_open_a_segment():
    tracker = PlaybackTracker()
    tracker.audio_sent("a", 0, now_ms=0)

    assert tracker.close_segment() is None
    assert tracker.all_played


def test_negative_sizes_are_refused():
    with pytest.raises(ValueError):
        PlaybackTracker().audio_sent("a", -1, now_ms=0)


def test_audio_is_audible_until_its_mark_echoes():
    tracker = PlaybackTracker()
    name = send_segment(tracker, "a", 100, now_ms=0)

    assert tracker.is_audible(50)
    # Past the estimate but not confirmed: Twilio may still be playing it.
    assert tracker.is_audible(500)
    tracker.mark_received(name, now_ms=500)
    assert not tracker.is_audible(500)


def test_audio_without_a_mark_is_audible_until_shortly_after_its_estimated_end():
    tracker = PlaybackTracker()
    tracker.audio_sent("a", ms(100), now_ms=0)

    assert tracker.is_audible(99)
    assert tracker.is_audible(100 + UNMARKED_SLACK_MS - 1)
    assert not tracker.is_audible(100 + UNMARKED_SLACK_MS)


def test_audio_streamed_at_real_time_stays_audible_between_deltas():
    # The model sends 20 ms deltas at the pace they play; the stream clock we see can run a
    # step or two ahead of the estimated end. The agent is still talking.
    tracker = PlaybackTracker()
    for step in range(10):
        tracker.audio_sent("a", ms(20), now_ms=step * 20)
    assert tracker.is_audible(200 + 40)


def test_nothing_is_audible_after_a_clear():
    tracker = PlaybackTracker()
    send_segment(tracker, "a", 100, now_ms=0)
    tracker.audio_sent("a", ms(100), now_ms=0)

    tracker.cleared(now_ms=10)

    assert not tracker.is_audible(10)


def test_bytes_per_ms_is_configurable():
    tracker = PlaybackTracker(bytes_per_ms=16)
    tracker.audio_sent("a", 1600, now_ms=0)

    assert tracker.sent_ms("a") == 100
    assert tracker.heard_ms("a", 25) == 25
