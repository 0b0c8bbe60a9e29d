"""When a growing file's tail is sent before the idle timer (consumer/tailtiming.py). Pure."""

from __future__ import annotations

from cefmp4.consumer.tailtiming import TailTiming

S = 1_000_000_000  # ns
IDLE = 8 * S


def test_with_no_pause_seen_the_tail_waits_a_quarter_of_the_idle_setting() -> None:
    timing = TailTiming(IDLE)
    timing.observe("a.mp4", 100, 10 * S, 10 * S)
    assert timing.wait_ns("a.mp4") == 2 * S
    assert not timing.quiet_enough("a.mp4", 10 * S, 11 * S)
    assert timing.quiet_enough("a.mp4", 10 * S, 12 * S)


def test_the_wait_is_twice_the_longest_pause_seen_at_most_the_idle_setting() -> None:
    timing = TailTiming(IDLE)
    timing.observe("a.mp4", 100, 10 * S, 13 * S)  # seen quiet for 3 s ...
    timing.observe("a.mp4", 200, 14 * S, 14 * S)  # ... then written again
    assert timing.wait_ns("a.mp4") == 6 * S
    timing.observe("a.mp4", 200, 14 * S, 19 * S)  # quiet for 5 s, then written again
    timing.observe("a.mp4", 300, 20 * S, 20 * S)
    assert timing.wait_ns("a.mp4") == IDLE


def test_looking_again_without_a_change_is_no_pause() -> None:
    timing = TailTiming(IDLE)
    timing.observe("a.mp4", 100, 10 * S, 10 * S)
    timing.observe("a.mp4", 100, 10 * S, 10 * S + S // 2)
    assert timing.wait_ns("a.mp4") == 2 * S


def test_a_tail_sent_in_vain_doubles_the_wait_for_the_next() -> None:
    timing = TailTiming(IDLE)
    timing.observe("a.mp4", 100, 10 * S, 10 * S)
    waits = []
    mtime = 10 * S
    for size in (200, 300, 400):
        wait = timing.wait_ns("a.mp4")
        waits.append(wait)
        timing.observe("a.mp4", size - 100, mtime, mtime + wait)  # the early look: quiet
        mtime += wait + S
        timing.observe("a.mp4", size, mtime, mtime)  # written again after all
    assert waits == [2 * S, 4 * S, IDLE]


def test_due_looks_come_once_each_and_not_for_forgotten_files() -> None:
    timing = TailTiming(IDLE)
    for path in ("a.mp4", "b.mp4", "c.mp4"):
        timing.observe(path, 100, 10 * S, 10 * S)
        timing.schedule(path, 10 * S)
    timing.schedule("a.mp4", 10 * S)
    timing.forget("b.mp4")
    assert timing.pop_due(11 * S) == []
    assert timing.pop_due(12 * S) == ["a.mp4", "c.mp4"]
    assert timing.pop_due(13 * S) == []
