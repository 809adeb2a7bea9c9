"""
Who may use a pcci cluster: API tokens, the cluster secret and the proofs
master and workers exchange.  See C{docs/security.md}.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger

from pcci.files import write_atomically

log = Logger()

API_TOKEN_FILE = "api-token"
CLUSTER_SECRET_FILE = "cluster-secret"
DEFAULT_STATE_DIR = "~/.pcci"


#: Token names: what a log line can hold without quoting.
NAME = re.compile(r"[A-Za-z0-9_.@:-]{1,64}\Z")


class AuthConfigError(Exception):
    """A secret or token file that cannot be used; the daemon does not start."""


# Files


def ensure_state_dir(path: str | os.PathLike[str]) -> Path:
    """
    Create the state directory (mode 0700) and its secrets (0600) where
    absent, or empty (a first start that was interrupted).  Secrets are
    written whole or not at all.
    """
    state_dir = Path(path).expanduser()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    for name, make in (
        (API_TOKEN_FILE, lambda: secrets.token_urlsafe(32)),
        (CLUSTER_SECRET_FILE, lambda: secrets.token_hex(32)),
    ):
        file = state_dir / name
        try:
            if file.read_text(encoding="utf-8").strip():
                continue
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError) as e:
            raise AuthConfigError(f"cannot read {file}: {e}") from None
        write_atomically(file, make() + "\n")
        log.info("created {file}", file=str(file))
    return state_dir


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """The cluster secret in C{path}: its first line, at least 16 characters."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AuthConfigError(f"cannot read the cluster secret: {e}") from None
    secret = text.strip().encode("utf-8")
    if len(secret) < 16:
        raise AuthConfigError(f"the cluster secret in {path} is under 16 characters")
    return secret


@dataclass(frozen=True)
class APIToken:
    value: bytes
    read_only: bool
    #: Who holds it, as pools' C{submitted_by} and the audit log say.
    name: str = "admin"

    def __repr__(self) -> str:  # never the secret value
        return f"APIToken(name={self.name!r}, read_only={self.read_only})"


def read_tokens(path: str | os.PathLike[str], unnamed: str | None = None) -> list[APIToken]:
    """
    API tokens from a file: one a line, a line may add C{read} to make its
    token read-only and C{name=NAME} to name who holds it (else it is
    C{unnamed}, or C{token-N} for N its line); blank lines and C{#}
    comments are skipped.
    """
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise AuthConfigError(f"cannot read API tokens: {e}") from None
    tokens = []
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        value, rest = words[0], words[1:]
        name = unnamed or f"token-{number}"
        read_only = False
        for word in rest:
            if word == "read":
                read_only = True
            elif word.startswith("name=") and NAME.match(word[5:]):
                name = word[5:]
            else:
                raise AuthConfigError(
                    f"{path}:{number}: expected 'TOKEN [read] [name=NAME]', not {word!r}"
                )
        if len(value) < 16:
            raise AuthConfigError(f"{path}:{number}: a token needs 16 characters or more")
        tokens.append(APIToken(value.encode("utf-8"), read_only, name))
    if not tokens:
        raise AuthConfigError(f"no API token in {path}")
    return tokens


def match_token(tokens: list[APIToken], presented: bytes) -> APIToken | None:
    """The token matching C{presented}, compared in constant time against each."""
    found = None
    for token in tokens:
        if hmac.compare_digest(token.value, presented):
            found = token
    return found


# The handshake on the worker port


def new_nonce() -> str:
    return secrets.token_hex(16)


def proof(
    secret: bytes, role: str, name: str, prover_nonce: str, verifier_nonce: str
) -> str:
    """
    What C{role} ("master" or "worker") sends to prove it holds the secret:
    an HMAC-SHA256 over both sides' fresh nonces, the worker's name and the
    role, so a proof is good for one connection and one direction only.
    """
    message = "\n".join(["pcci-v1", role, name, prover_nonce, verifier_nonce])
    return hmac.new(secret, message.encode("utf-8"), hashlib.sha256).hexdigest()


def check_proof(
    secret: bytes,
    role: str,
    name: str,
    prover_nonce: str,
    verifier_nonce: str,
    presented: str,
) -> bool:
    expected = proof(secret, role, name, prover_nonce, verifier_nonce)
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "replace"))
