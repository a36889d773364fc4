import os

import pytest

from prefork.pool import scoreboard
from prefork.pool.scoreboard import MESSAGE_SIZE, Scoreboard


def test_a_forked_child_writes_what_the_parent_reads():
    board = Scoreboard(4, threads=2)
    board.reset(3, now=1.0)
    pid = os.fork()
    if pid == 0:
        header = board.writer(3)
        header.set(scoreboard.PID, os.getpid())
        header.set(scoreboard.STATE, scoreboard.IDLE)
        first, second = board.thread_writer(3, 0), board.thread_writer(3, 1)
        first.begin_request(5.0)
        first.end_request(6.0, requests=41)
        second.end_request(6.5, requests=2)
        second.begin_request(7.0)
        board.write_message(3, "boot failed: ünïcode")
        os._exit(0)
    os.waitpid(pid, 0)
    view = board.view(3)
    assert view.pid == pid and view.state == scoreboard.IDLE and view.ready
    assert view.requests == 43 and view.busy_threads == 1 and view.state_name == "busy"
    assert view.tick == 6.5 and view.request_start == 7.0
    assert board.message(3) == "boot failed: ünïcode"
    assert board.view(2).state_name == "free"


def test_request_start_is_that_of_the_oldest_request_in_hand():
    board = Scoreboard(1, threads=3)
    for thread, start in ((0, 9.0), (1, 4.0), (2, 6.0)):
        board.thread_writer(1, thread).begin_request(start)
    board.thread_writer(1, 1).end_request(10.0, 1)
    view = board.view(1)
    assert view.busy_threads == 2 and view.request_start == 6.0 and view.requests == 1


def test_reset_clears_a_slot_for_the_next_worker():
    board = Scoreboard(2)
    board.thread_writer(1, 0).begin_request(3.0)
    board.writer(1).set(scoreboard.RETIRE, scoreboard.EXHAUSTED)
    board.write_message(1, "old")
    board.reset(1, now=9.0)
    view = board.view(1)
    assert view.state == scoreboard.BOOTING and not view.ready
    assert view.tick == 9.0 and view.request_start == 0.0 and view.busy_threads == 0
    assert view.retire == scoreboard.KEEP and board.message(1) == ""


def test_long_messages_are_cut_to_fit_and_slots_are_checked():
    board = Scoreboard(1)
    board.write_message(1, "x" * 1000)
    assert board.message(1) == "x" * (MESSAGE_SIZE - 1)
    with pytest.raises(IndexError):
        board.view(2)
    with pytest.raises(IndexError):
        board.thread_writer(1, 1)


def test_each_request_lands_in_one_duration_bucket_and_a_quick_stop_in_none():
    board = Scoreboard(2, threads=2)
    first, second = board.thread_writer(1, 0), board.thread_writer(1, 1)
    for writer, start, end, served in ((first, 10.0, 10.0003, 1), (first, 11.0, 11.001, 2),
                                       (second, 5.0, 5.2, 1), (second, 6.0, 36.0, 2)):
        writer.begin_request(start)
        writer.end_request(end, served)
    second.begin_request(40.0)
    second.end_request(41.0, 2, observe=False)        # abandoned: neither counted nor timed
    counts, seconds = board.durations(1)
    bounds = scoreboard.DURATION_BOUNDS
    expected = [0] * (len(bounds) + 1)
    for duration in (0.0003, 0.001, 0.2, 30.0):
        expected[next((i for i, bound in enumerate(bounds) if duration <= bound + 1e-9), len(bounds))] += 1
    assert counts == expected and sum(counts) == 4 == board.view(1).requests
    assert seconds == pytest.approx(0.0003 + 0.001 + 0.2 + 30.0)
    assert board.durations(2) == ([0] * (len(bounds) + 1), 0.0)
    board.reset(1, 0.0)
    assert board.durations(1)[0] == [0] * (len(bounds) + 1)
