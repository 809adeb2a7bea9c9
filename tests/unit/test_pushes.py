"""A push's upload on the master: what an archive may hold, and a spool that ends early."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from fakes import started
from test_master import connect, frames, hello, setup

from pcci.master.cluster.dispatch import PoolOrder
from pcci.master.cluster.state import ClusterState
from pcci.master.transfers.pushes import ArchiveError, Destination, Push, ShortRead, Spool, read_archive
from pcci.wire import encode


def archive_of(*members: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return body


def claiming(name: str, claimed: int, data: bytes, then: bytes = b"") -> io.BytesIO:
    """A tar whose member says it holds C{claimed} bytes, followed by only C{data} (and C{then})."""
    info = tarfile.TarInfo(name)
    info.size = claimed
    return io.BytesIO(info.tobuf(format=tarfile.GNU_FORMAT) + data + then)


@pytest.mark.parametrize(
    "claimed, data",
    [
        (2**30, b"x" * 10),  # a 10 KiB upload claiming a gigabyte
        (2**40, b""),  # nothing at all after the header
        (1025, b"y" * 1024),  # one byte short, at the very end
        (600, b"z" * 512),  # short within its last block
    ],
)
def test_a_member_running_past_the_upload_is_refused_by_name(claimed: int, data: bytes) -> None:
    with pytest.raises(ArchiveError, match=r"big\.bin: its \d+ bytes run past the end of the upload"):
        read_archive(Spool(claiming("dir/big.bin", claimed, data)))


def test_a_member_past_the_end_is_refused_even_after_good_ones() -> None:
    good = archive_of((tarfile.TarInfo("good"), b"fine\n")).getvalue()
    # Drop the end-of-archive blocks, then a member that claims more than follows.
    upload = io.BytesIO(good[: good.rindex(b"fine\n") + 512] + claiming("late", 5000, b"q" * 100).getvalue())
    with pytest.raises(ArchiveError, match="late: its 5000 bytes"):
        read_archive(Spool(upload))


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
@pytest.mark.parametrize("tar_format", ["gnu", "posix", "oldgnu"])
def test_a_sparse_member_is_refused_by_name(tmp_path: Path, tar_format: str) -> None:
    sparse = tmp_path / "holes.img"
    with sparse.open("wb") as f:
        f.truncate(1 << 30)
        f.seek(1 << 20)
        f.write(b"data")
    upload = tmp_path / "upload.tar"
    subprocess.run(
        ["tar", "-S", f"--format={tar_format}", "-cf", str(upload), "-C", str(tmp_path), "holes.img"],
        check=True,
    )
    assert upload.stat().st_size < 64 * 1024
    with upload.open("rb") as f, pytest.raises(ArchiveError, match="holes.img: a sparse file"):
        read_archive(Spool(f))


def test_a_spool_read_is_exact_or_refused(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    path.write_bytes(b"0123456789")
    for spool in (Spool(io.BytesIO(b"0123456789")), Spool(path.open("rb"))):
        assert spool.size == 10
        assert spool.read(2, 3) == b"234" and spool.read(10, 0) == b""
        with pytest.raises(ShortRead):
            spool.read(8, 3)
        with pytest.raises(ShortRead):
            spool.read(100, 1)
        spool.close()


def test_a_spool_that_ends_early_mid_push_fails_that_job_and_never_spins() -> None:
    """A short read while sending: the worker is told to drop the push, and the job fails, once."""
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.dataReceived(hello())
    frames(transport)
    payload = b"p" * 300_000
    upload = archive_of((tarfile.TarInfo("big"), payload))
    spool = Spool(upload)
    archive = read_archive(spool)
    push = Push(state.reports, spool, archive, Destination("/tmp/"), state.pushes)
    pool = started(state.dispatcher.submit(PoolOrder("push", start=push.start), ["node1"]))
    assert [f["code"] for f in frames(transport)] == ["put"]
    upload.truncate(archive.offsets["big"] + 1000)  # the spool loses its bytes
    protocol.dataReceived(encode({"code": "put_need", "pool": pool.id, "paths": ["big"], "more": False}))
    sent = transport.value()
    assert b'"code":"kill"' in sent and sent.count(b"put_data") == 0
    job = pool.jobs["node1"]
    assert job.state == "failed" and "push stopped: the upload cannot be read: big:" in job.output.text()
    # More acks from the worker send nothing more.
    transport.clear()
    protocol.dataReceived(encode({"code": "put_ack", "pool": pool.id, "written": 0}))
    assert b"put_data" not in transport.value()


def test_a_whole_push_still_goes(tmp_path: Path) -> None:
    state: ClusterState
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.dataReceived(hello())
    frames(transport)
    payload = b"q" * 600_000
    upload = archive_of((tarfile.TarInfo("big"), payload), (tarfile.TarInfo("empty"), b""))
    spool = Spool(upload)
    push = Push(state.reports, spool, read_archive(spool), Destination("/tmp/"), state.pushes)
    pool = started(state.dispatcher.submit(PoolOrder("push", start=push.start), ["node1"]))
    frames(transport)
    protocol.dataReceived(encode({"code": "put_need", "pool": pool.id, "paths": ["big", "empty"], "more": False}))
    sent = transport.value()
    assert sent.count(b'"code":"put_data"') == 4 and b"put_end" in sent and b'"code":"kill"' not in sent
    assert payload[:1000] in sent and pool.jobs["node1"].state == "running"


def test_more_entries_than_allowed_are_refused_before_they_are_all_read() -> None:
    members = [(tarfile.TarInfo(f"e{n}"), b"") for n in range(11)]
    with pytest.raises(ArchiveError, match="more than 10 entries"):
        read_archive(Spool(archive_of(*members)), max_entries=10)
    assert len(read_archive(Spool(archive_of(*members[:10])), max_entries=10).entries) == 10
