"""Secrets on disk, token files and handshake proofs."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pcci import auth


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_dir_and_secrets_are_created_private(tmp_path: Path) -> None:
    state_dir = auth.ensure_state_dir(tmp_path / "state")
    assert mode(state_dir) == 0o700
    for name in (auth.API_TOKEN_FILE, auth.CLUSTER_SECRET_FILE):
        assert mode(state_dir / name) == 0o600
    assert len(auth.read_secret(state_dir / auth.CLUSTER_SECRET_FILE)) == 64
    (token,) = auth.read_tokens(state_dir / auth.API_TOKEN_FILE)
    assert not token.read_only and len(token.value) >= 32


def test_existing_secrets_are_kept(tmp_path: Path) -> None:
    first = auth.ensure_state_dir(tmp_path)
    secret = auth.read_secret(first / auth.CLUSTER_SECRET_FILE)
    token = auth.read_tokens(first / auth.API_TOKEN_FILE)
    auth.ensure_state_dir(tmp_path)
    assert auth.read_secret(first / auth.CLUSTER_SECRET_FILE) == secret
    assert auth.read_tokens(first / auth.API_TOKEN_FILE) == token


def test_token_file(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text("# admins\n" + "a" * 20 + "\n\n" + "b" * 20 + " read  # dashboards\n")
    tokens = auth.read_tokens(file)
    assert [(t.value, t.read_only) for t in tokens] == [(b"a" * 20, False), (b"b" * 20, True)]
    assert auth.match_token(tokens, b"b" * 20) == tokens[1]
    assert auth.match_token(tokens, b"c" * 20) is None


@pytest.mark.parametrize("text", ["", "# nothing\n", "short\n", "a" * 20 + " write\n", "a" * 20 + " read x\n"])
def test_bad_token_files_are_refused(tmp_path: Path, text: str) -> None:
    file = tmp_path / "tokens"
    file.write_text(text)
    with pytest.raises(auth.AuthConfigError):
        auth.read_tokens(file)


def test_short_or_missing_secret_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("tooshort\n")
    with pytest.raises(auth.AuthConfigError):
        auth.read_secret(tmp_path / "s")
    with pytest.raises(auth.AuthConfigError):
        auth.read_secret(tmp_path / "missing")


def test_proofs_bind_role_name_and_both_nonces() -> None:
    secret = b"k" * 32
    good = auth.proof(secret, "worker", "pi1", "n1", "n2")
    assert auth.check_proof(secret, "worker", "pi1", "n1", "n2", good)
    for args in [
        ("master", "pi1", "n1", "n2"),
        ("worker", "pi2", "n1", "n2"),
        ("worker", "pi1", "n2", "n1"),
        ("worker", "pi1", "n1", "n3"),
    ]:
        assert not auth.check_proof(secret, *args, good)
    assert not auth.check_proof(b"x" * 32, "worker", "pi1", "n1", "n2", good)
    assert not auth.check_proof(secret, "worker", "pi1", "n1", "n2", "\udcff")


def test_an_empty_secret_from_an_interrupted_start_is_made_anew(tmp_path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / auth.API_TOKEN_FILE).write_text("")
    (state / auth.CLUSTER_SECRET_FILE).write_text("\n")
    auth.ensure_state_dir(state)
    assert len((state / auth.API_TOKEN_FILE).read_text().strip()) >= 32
    assert len(auth.read_secret(state / auth.CLUSTER_SECRET_FILE)) >= 32
    assert [p.name for p in state.iterdir() if p.name.startswith(".")] == []
