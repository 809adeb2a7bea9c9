"""Pushing files to real workers: `pcci cp` and `POST /files`, end to end."""

from __future__ import annotations

import hashlib
import io
import os
import pwd
import signal
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from cluster import Cluster

pytestmark = pytest.mark.e2e

PCCI = str(Path(sys.executable).parent / "pcci")
ADMIN = "admin-token-for-the-file-tests"
READER = "reader-token-for-the-file-tests"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("files")
    c = Cluster(directory)
    try:
        c.start_master_with_tokens(ADMIN, READER)
        c.start_worker("f1")
        c.start_worker("f2", "--state-dir", str(directory / "f2-state"))
        yield c
    finally:
        c.stop()


def cp(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PCCI_URL": f"http://127.0.0.1:{c.api_port}", "PCCI_TOKEN": c.token or ""}
    return subprocess.run([PCCI, "cp", *args], capture_output=True, text=True, env=env, timeout=60)


def push(c: Cluster, archive: bytes, query: str, token: str | None = None) -> tuple[int, dict]:
    return c.request("POST", f"/files?{query}&wait=30", raw=archive,
                     headers={"Content-Type": "application/x-tar"}, token=token)


def tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w") as archive:
        for member, data in members:
            member.size = len(data) if member.isreg() else 0
            archive.addfile(member, io.BytesIO(data))
    return body.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


def test_a_file_and_a_tree_arrive_with_modes_times_and_links(pair: Cluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "tree" / "sub").mkdir(parents=True)
    (src / "one.txt").write_text("one EOM\n")
    (src / "one.txt").chmod(0o640)
    os.utime(src / "one.txt", (1_600_000_000, 1_600_000_000))
    big = os.urandom(3_000_000)
    (src / "tree" / "big.bin").write_bytes(big)
    (src / "tree" / "sub" / "x").write_text("x\n")
    os.symlink("big.bin", src / "tree" / "link")
    dest = tmp_path / "dest"
    done = cp(pair, "-w", "f1,f2", "--mkdir", str(src / "one.txt"), f"{dest}/file.txt")
    assert done.returncode == 0, done.stderr
    assert "1 files written (8 bytes), 0 unchanged" in done.stdout and "ok: f[1-2]" in done.stderr
    copied = dest / "file.txt"
    assert copied.read_text() == "one EOM\n"
    assert copied.stat().st_mode & 0o777 == 0o640 and copied.stat().st_mtime == 1_600_000_000
    done = cp(pair, "-w", "f1", "-r", str(src / "tree"), f"{dest}/")
    assert done.returncode == 0, done.stderr
    assert (dest / "tree" / "big.bin").read_bytes() == big
    assert (dest / "tree" / "sub" / "x").read_text() == "x\n"
    assert os.readlink(dest / "tree" / "link") == "big.bin"
    # Again: nothing is sent, and the summary says so.
    again = cp(pair, "-w", "f1", "-r", str(src / "tree"), f"{dest}/")
    assert again.returncode == 0 and "0 files written (0 bytes), 2 unchanged" in again.stdout
    assert not [p for p in dest.rglob(".*.tmp")]


def test_refusals(pair: Cluster, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    for name in ("../evil", "/etc/evil", "a/../../evil"):
        code, answer = push(pair, tar((member(name), b"x")), f"workers=f1&dest={dest}/")
        assert code == 400 and "refused path" in answer["message"], answer
    # A link out of the tree does not carry a write out of it.
    outside = tmp_path / "outside"
    outside.mkdir()
    code, answer = push(
        pair,
        tar((member("esc", tarfile.SYMTYPE, str(outside)), b""), (member("esc/pwned"), b"x")),
        f"workers=f1&dest={dest}/",
    )
    job = answer["pool"]["jobs"][0]
    assert code == 200 and job["state"] == "failed" and "leads it out" in job["result"]
    assert list(outside.iterdir()) == []
    # Several sources need a directory; a missing source is one line.
    done = cp(pair, "-w", "f1", __file__, __file__, f"{tmp_path}/nodir")
    assert done.returncode == 1 and "not a directory (--mkdir makes it)" in done.stdout
    done = cp(pair, "-w", "f1", f"{tmp_path}/missing", f"{dest}/")
    assert done.returncode == 2 and "missing: no such file or directory" in done.stderr
    # A read-only token may not push.
    code, answer = push(pair, tar((member("x"), b"x")), f"workers=f1&dest={dest}/", token=READER)
    assert code == 403 and not (dest / "x").exists()


def test_an_upload_shorter_than_its_members_is_refused_and_the_master_goes_on(
    pair: Cluster, tmp_path: Path
) -> None:
    """A 10 KiB tar claiming a gigabyte, sparse or truncated: a 400 naming it, not a spinning master."""
    sparse = tmp_path / "holes.img"
    with sparse.open("wb") as f:
        f.truncate(1 << 30)
    subprocess.run(["tar", "-S", "-cf", str(tmp_path / "s.tar"), "-C", str(tmp_path), "holes.img"], check=True)
    claims = tarfile.TarInfo("claims.bin")
    claims.size = 1 << 30
    truncated = claims.tobuf(format=tarfile.GNU_FORMAT) + b"x" * 10_000
    dest = tmp_path / "dest"
    for body, name in (((tmp_path / "s.tar").read_bytes(), "holes.img"), (truncated, "claims.bin")):
        code, answer = push(pair, body, f"workers=f1,f2&dest={dest}/&mkdir=1")
        assert code == 400 and answer["message"].startswith(name), answer
        assert pair.request("GET", "/health", timeout=5)[0] == 200
    assert not dest.exists()
    code, answer = push(pair, tar((member("after"), b"ok\n")), f"workers=f1&dest={dest}/&mkdir=1")
    assert code == 200 and (dest / "after").read_bytes() == b"ok\n"


def test_empty_files_count_as_written(pair: Cluster, tmp_path: Path) -> None:
    dest = tmp_path / "empties"
    code, answer = push(pair, tar(*((member(f"e{n}"), b"") for n in range(3)), (member("full"), b"x\n")),
                        f"workers=f1&dest={dest}/&mkdir=1")
    assert code == 200 and answer["pool"]["state"] == "ok", answer
    assert answer["pool"]["jobs"][0]["result"].startswith("4 files written (2 bytes), 0 unchanged")
    assert sorted(p.name for p in dest.iterdir()) == ["e0", "e1", "e2", "full"]


def test_a_reader_never_sees_a_partial_file(pair: Cluster, tmp_path: Path) -> None:
    dest = tmp_path / "seen"
    payloads = [os.urandom(2_000_000) for _ in range(3)]
    digests = {hashlib.sha256(p).hexdigest() for p in payloads}
    seen: set[str] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add(hashlib.sha256((dest / "f.bin").read_bytes()).hexdigest())
            except FileNotFoundError:
                pass

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for payload in payloads:
            code, answer = push(pair, tar((member("f.bin"), payload)), f"workers=f1&dest={dest}/&mkdir=1")
            assert code == 200 and answer["pool"]["state"] == "ok", answer
    finally:
        stop.set()
        reader.join()
    assert seen and seen <= digests


def test_a_worker_lost_mid_push_ends_lost_and_the_master_stays_small(
    tmp_path: Path,
) -> None:
    c = Cluster(tmp_path / "lost")
    try:
        c.start_master("--reconnect-grace", "1")
        worker = c.start_worker("slow")
        master = psutil.Process(c.master.pid)
        before = master.memory_info().rss
        worker.signal(signal.SIGSTOP)  # it reads nothing more: the window fills
        dest = tmp_path / "dest"
        code, answer = c.request(
            "POST", f"/files?workers=slow&dest={dest}/&mkdir=1",
            raw=tar((member("big.bin"), os.urandom(40_000_000))),
            headers={"Content-Type": "application/x-tar"},
        )
        assert code == 200, answer
        pool_id = answer["pool_id"]
        grown = master.memory_info().rss - before
        assert grown < 20_000_000, f"the master grew by {grown} bytes"  # not the 40 MB
        worker.signal(signal.SIGKILL)
        pool = c.wait_pool(pool_id)
        assert pool["jobs"][0]["state"] == "lost"
        assert not (dest / "big.bin").exists()
    finally:
        c.stop()


def fetch(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PCCI_URL": f"http://127.0.0.1:{c.api_port}", "PCCI_TOKEN": c.token or ""}
    return subprocess.run([PCCI, "fetch", *args], capture_output=True, text=True, env=env, timeout=60)


def test_fetch_a_file_and_a_tree_into_a_directory_per_worker(pair: Cluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "tree" / "sub").mkdir(parents=True)
    (src / "log").write_text("line EOM\n")
    big = os.urandom(1_500_000)
    (src / "tree" / "big.bin").write_bytes(big)
    (src / "tree" / "sub" / "x").write_text("x\n")
    (src / "tree" / "sub" / "x").chmod(0o600)
    os.symlink("big.bin", src / "tree" / "link")
    got = tmp_path / "got"
    done = fetch(pair, "-w", "f1,f2", str(src / "log"), str(got))
    assert done.returncode == 0, done.stderr
    assert "1 files read (9 bytes)" in done.stdout and "ok: f[1-2]" in done.stderr
    for worker in ("f1", "f2"):
        assert (got / worker / "log").read_text() == "line EOM\n"
    done = fetch(pair, "-w", "f1", "-r", str(src / "tree"), str(got))
    assert done.returncode == 0, done.stderr
    tree = got / "f1" / "tree"
    assert (tree / "big.bin").read_bytes() == big
    assert (tree / "sub" / "x").read_text() == "x\n" and (tree / "sub" / "x").stat().st_mode & 0o777 == 0o600
    assert os.readlink(tree / "link") == "big.bin"
    assert not [p for p in got.rglob(".pcci-fetch-*")]
    # A directory needs -r; a missing path is the OS's reason; nothing lands.
    done = fetch(pair, "-w", "f1", str(src / "tree"), str(tmp_path / "none"))
    assert done.returncode == 1 and "is a directory: fetch it with -r" in done.stdout
    done = fetch(pair, "-w", "f1", str(src / "missing"), str(tmp_path / "none"))
    assert done.returncode == 1 and "missing: No such file or directory" in done.stdout
    assert not (tmp_path / "none").exists()
    # A read-only token may not fetch.
    code, _ = pair.request("POST", f"/fetches?workers=f1&path={src}/log", token=READER)
    assert code == 403


def test_a_file_that_changes_while_fetched_is_reported(pair: Cluster, tmp_path: Path) -> None:
    growing = tmp_path / "growing.log"
    growing.write_bytes(os.urandom(4_000_000))
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time\nwhile True:\n open({str(growing)!r}, 'a').write('more\\n'); time.sleep(0.001)",
        ]
    )
    try:
        done = fetch(pair, "-w", "f1", str(growing), str(tmp_path / "got"))
    finally:
        writer.kill()
        writer.wait()
    assert done.returncode == 1 and "growing.log changed while it was read" in done.stdout


def test_owner_asks_a_root_worker_to_give_files_away(pair: Cluster, tmp_path: Path) -> None:
    src = tmp_path / "owned.txt"
    src.write_text("mine\n")
    dest = tmp_path / "dest"
    done = cp(pair, "-w", "f1", "--mkdir", "--owner", "nobody", str(src), f"{dest}/")
    if os.geteuid() == 0:  # CI: the workers run as root
        assert done.returncode == 0, done.stdout + done.stderr
        assert (dest / "owned.txt").stat().st_uid == pwd.getpwnam("nobody").pw_uid
    else:
        assert done.returncode == 1 and "the worker does not run as root" in done.stdout
    code, answer = push(pair, tar((member("x"), b"x")), f"workers=f1&dest={dest}/&owner=no%20body")
    assert code == 400 and "USER:GROUP" in answer["message"]
