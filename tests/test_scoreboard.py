import os

import pytest

from prefork import scoreboard
from prefork.scoreboard import MESSAGE_SIZE, Scoreboard


def test_a_forked_child_writes_what_the_parent_reads():
    board = Scoreboard(4)
    board.reset(3, now=1.0)
    pid = os.fork()
    if pid == 0:
        slot = board.writer(3)
        slot.set(scoreboard.PID, os.getpid())
        slot.begin_request(5.0)
        slot.end_request(6.0, requests=41)
        board.write_message(3, "boot failed: ünïcode")
        os._exit(0)
    os.waitpid(pid, 0)
    assert board.read(3, scoreboard.PID) == pid
    assert board.read(3, scoreboard.STATE) == scoreboard.IDLE
    assert board.read(3, scoreboard.REQUESTS) == 41
    assert (board.read(3, scoreboard.TICK), board.read(3, scoreboard.REQUEST_START)) == (6.0, 0.0)
    assert board.message(3) == "boot failed: ünïcode"
    assert board.read(2, scoreboard.STATE) == scoreboard.FREE
    board.close()


def test_reset_clears_a_slot_for_the_next_worker():
    board = Scoreboard(2)
    slot = board.writer(1)
    slot.begin_request(3.0)
    board.write_message(1, "old")
    board.reset(1, now=9.0)
    assert board.read(1, scoreboard.STATE) == scoreboard.BOOTING
    assert board.read(1, scoreboard.TICK) == 9.0 and board.read(1, scoreboard.REQUEST_START) == 0.0
    assert board.message(1) == ""
    board.close()


def test_long_messages_are_cut_to_fit_and_slots_are_checked():
    board = Scoreboard(1)
    board.write_message(1, "x" * 1000)
    assert board.message(1) == "x" * (MESSAGE_SIZE - 1)
    with pytest.raises(IndexError):
        board.read(2, scoreboard.STATE)
    board.close()
