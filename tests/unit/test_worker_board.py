"""The workers' connection board (``workers/board.py``): who takes the next client."""

from __future__ import annotations

import pathlib

from ironfunctions.workers.board import STARTING, ConnectionBoard


def boards(tmp_path: pathlib.Path, workers: int = 3) -> tuple[ConnectionBoard, list[ConnectionBoard]]:
    path = str(tmp_path / "board")
    parent = ConnectionBoard(path, workers)
    for index in range(workers):
        parent.reset(index)
    return parent, [ConnectionBoard(path, workers, index) for index in range(workers)]


def test_the_worker_holding_fewest_connections_takes_the_next_one(tmp_path: pathlib.Path) -> None:
    _, (a, b, c) = boards(tmp_path)
    a.publish(4)
    b.publish(2)
    c.publish(2)
    assert [w.least_loaded() for w in (a, b, c)] == [False, True, True]


def test_a_gone_worker_takes_no_part(tmp_path: pathlib.Path) -> None:
    parent, (a, b, c) = boards(tmp_path)
    a.publish(4)
    b.publish(0)
    c.publish(9)
    parent.reset(1)  # worker 1 died
    assert a.least_loaded() and not c.least_loaded()


def test_a_starting_worker_leaves_clients_to_a_ready_one_however_busy(tmp_path: pathlib.Path) -> None:
    _, (a, b, c) = boards(tmp_path)
    a.publish(STARTING)
    b.publish(1000)
    c.publish(STARTING)
    assert not a.least_loaded() and b.least_loaded()


def test_with_none_ready_a_starting_worker_answers(tmp_path: pathlib.Path) -> None:
    parent, (a, b, c) = boards(tmp_path)
    a.publish(STARTING)
    b.publish(STARTING)
    assert a.least_loaded() and b.least_loaded()  # c is gone: someone must say 503
