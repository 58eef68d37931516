"""The engine's multiplexed attach stream, decoded (``drivers.stream`` and the
``DemuxedStream`` adapter of ``drivers.attach``)."""

from __future__ import annotations

import pytest

from ironfunctions.drivers.attach import DemuxedStream
from ironfunctions.drivers.stream import STDERR, STDOUT, Demuxer, frame

FRAMES = [(STDOUT, b"HTTP/1.1 200 OK\r\n"), (STDERR, b"a log line\n"), (STDOUT, b""), (STDOUT, b"x" * 70000)]
RAW = b"".join(frame(kind, payload) for kind, payload in FRAMES)


def decode(*reads: bytes) -> list[tuple[int, bytes]]:
    demuxer = Demuxer()
    frames = [f for data in reads for f in demuxer.feed(data)]
    assert demuxer.pending == 0
    return frames


def test_one_whole_frame_per_read() -> None:
    assert decode(*(frame(kind, payload) for kind, payload in FRAMES)) == FRAMES


def test_many_frames_in_one_read() -> None:
    assert decode(RAW) == FRAMES


@pytest.mark.parametrize("cut", [1, 7, 8, 9, 20, 40, len(RAW) - 1])
def test_frames_split_anywhere(cut: int) -> None:
    assert decode(RAW[:cut], RAW[cut:]) == FRAMES


def test_byte_by_byte() -> None:
    small = RAW[: len(RAW) - 70008]  # all but the big frame
    assert decode(*(small[i:i + 1] for i in range(len(small)))) == FRAMES[:3]


def test_an_incomplete_frame_is_held_back() -> None:
    demuxer = Demuxer()
    assert demuxer.feed(frame(STDOUT, b"hello")[:-1]) == []
    assert demuxer.pending == 12
    assert demuxer.feed(b"o") == [(STDOUT, b"hello")]


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, bytes]] = []

    def stdout_received(self, data: bytes) -> None:
        self.events.append(("out", data))

    def stderr_received(self, data: bytes) -> None:
        self.events.append(("err", data))

    def stream_closed(self) -> None:
        self.events.append(("closed", b""))


def test_demuxed_stream_sorts_frames_and_closes_once() -> None:
    recorder = Recorder()
    stream = DemuxedStream(recorder)  # type: ignore[arg-type]
    stream.stdout_received(RAW[:30])
    stream.stdout_received(RAW[30:])
    stream.stream_closed()
    stream.stream_closed()
    assert recorder.events == [("out", FRAMES[0][1]), ("err", FRAMES[1][1]), ("out", b""),
                               ("out", FRAMES[3][1]), ("closed", b"")]
