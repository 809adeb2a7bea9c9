"""What a push carries, checked: entries, paths, and raw pieces between frames."""

from __future__ import annotations

from typing import Any

import pytest

from pcci.transfer import Entry, UnsafePath, batches, safe_path
from pcci.wire import MASTER_MESSAGES, FramedJSONProtocol, encode


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\0b"])
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafePath):
        safe_path(path)


def test_entries_round_trip_and_are_checked() -> None:
    entries = [
        Entry("d", "dir", mode=0o755, mtime=1.0),
        Entry("d/f", "file", 3, 0o640, 2.0, "a" * 64),
        Entry("d/l", "link", mode=0o777, mtime=3.0, target="f"),
    ]
    assert [Entry.from_wire(e) for batch in batches(entries) for e in batch] == entries
    for bad in (
        {"path": "f", "kind": "fifo", "mode": 0, "mtime": 0},
        {"path": "f", "kind": "file", "mode": 0o644, "mtime": 0, "size": -1, "sha256": "a" * 64},
        {"path": "f", "kind": "file", "mode": 0o644, "mtime": 0, "size": 1, "sha256": "short"},
        {"path": "l", "kind": "link", "mode": 0o777, "mtime": 0},
        {"path": "f", "kind": "dir", "mode": 0o10000, "mtime": 0},
        "not an object",
    ):
        with pytest.raises(ValueError):
            Entry.from_wire(bad)


def test_many_entries_go_in_several_batches() -> None:
    entries = [Entry(f"dir/file-{i:05d}", "file", 1, 0o644, 0.0, "b" * 64) for i in range(2000)]
    found = list(batches(entries))
    assert len(found) > 1 and sum(len(batch) for batch in found) == 2000


class Receiving(FramedJSONProtocol):
    accepts = MASTER_MESSAGES

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def handle_put_data(self, message: dict[str, Any]) -> None:
        self.seen.append(message["offset"])
        self.receive_raw(message["size"], self.seen.append)

    def handle_pong(self, message: dict[str, Any]) -> None:
        self.seen.append("pong")


def test_raw_pieces_between_frames_arrive_whole_whatever_the_cuts() -> None:
    piece = b"EOM raw \x00 bytes EOM" * 100
    header = encode({"code": "put_data", "pool": "p", "path": "f", "offset": 0, "size": len(piece)})
    stream = header + piece + encode({"code": "pong"}) + header + piece
    for cut in (1, 7, 100, len(stream)):
        protocol = Receiving()
        for start in range(0, len(stream), cut):
            protocol.dataReceived(stream[start:start + cut])
        assert protocol.seen == [0, piece, "pong", 0, piece], cut
