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
import shlex
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger

from pcci.files import write_atomically
from pcci.scopes import Scope, ScopeError

log = Logger()

API_TOKEN_FILE = "api-token"
CLUSTER_SECRET_FILE = "cluster-secret"
DEFAULT_STATE_DIR = "~/.pcci"


#: Token names: what a log line can hold without quoting.
NAME = re.compile(r"[A-Za-z0-9_.@:-]{1,64}\Z")


class AuthConfigError(Exception):
    """A secret or token file that cannot be used; the daemon does not start."""


# Files


def ensure_state_dir(path: str | os.PathLike[str], secret: bool = True) -> Path:
    """
    Create the state directory (mode 0700) and its secrets (0600) where
    absent, or empty (a first start that was interrupted): the API token
    and, with C{secret}, the cluster secret.  Secrets are written whole or
    not at all.
    """
    state_dir = Path(path).expanduser()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    for name, make in (
        (API_TOKEN_FILE, lambda: secrets.token_urlsafe(32)),
        *([(CLUSTER_SECRET_FILE, lambda: secrets.token_hex(32))] if secret else []),
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


WEBHOOK_SECRET_FILE = "webhook-secret"


def webhook_secret(path: str | os.PathLike[str]) -> bytes:
    """
    The secret webhook deliveries are signed with: the first line of the
    file at C{path}, made (0600, its directory 0700) when absent or empty.
    """
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as e:
        raise AuthConfigError(f"cannot read the webhook secret: {e}") from None
    if not text:
        file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = secrets.token_hex(32)
        write_atomically(file, text + "\n")
        log.info("created {file}", file=str(file))
    return text.encode("utf-8")


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
    #: What it is limited to (see L{pcci.scopes}); None: everything.
    scope: Scope | None = None

    def __repr__(self) -> str:  # never the secret value
        return f"APIToken(name={self.name!r}, read_only={self.read_only}, scope={self.scope!r})"

    @property
    def admin(self) -> bool:
        """A full token without a scope: it may do anything, tokens included."""
        return not self.read_only and self.scope is None

    def describe(self) -> dict[str, object]:
        """What the token is and may do, never its value."""
        return {
            "name": self.name,
            "read_only": self.read_only,
            "scope": None if self.scope is None else self.scope.to_json(),
        }


#: What a line of a tokens file holds.
TOKEN_LINE = (
    "TOKEN [read] [name=NAME] [workers=TARGETS] [labels=KEY[=VALUE]] [commands=GLOB]"
    " [stdin=yes] [cwd=DIR] [notify=URL] [shell=yes]"
)


def parse_token_line(words: list[str], name: str) -> tuple[str, bool, str, Scope | None]:
    """
    A token line's words (split as a shell would): its value, whether it
    is read-only, its name (C{name} if it gives none) and its scope.

    @raise ValueError: a word that is none of these.
    """
    value, rest = words[0], words[1:]
    read_only = False
    parts: dict[str, list[str]] = {"workers": [], "labels": [], "commands": [], "cwd": [], "notify": []}
    flags = {"stdin": False, "shell": False}
    for word in rest:
        key, sep, text = word.partition("=")
        if word == "read":
            read_only = True
        elif key in flags and text == "yes":
            flags[key] = True
        elif key == "name" and NAME.match(text):
            name = text
        elif sep and key in parts and text:
            parts[key].append(text)
        else:
            raise ValueError(f"expected '{TOKEN_LINE}', not {word!r}")
    if len(value) < 16:
        raise ValueError("a token needs 16 characters or more")
    try:
        scope = Scope(
            workers=tuple(parts["workers"]), labels=tuple(parts["labels"]), commands=tuple(parts["commands"]),
            cwd=tuple(parts["cwd"]), notify=tuple(parts["notify"]), stdin=flags["stdin"], shell=flags["shell"],
        )
    except ScopeError as e:
        raise ValueError(str(e)) from None
    return value, read_only, name, scope if scope.limited else None


def read_tokens(path: str | os.PathLike[str], unnamed: str | None = None) -> list[APIToken]:
    """
    API tokens from a file: one a line, split as a shell would.  A line
    may add C{read} to make its token read-only, C{name=NAME} to name who
    holds it (else it is C{unnamed}, or C{token-N} for N its line) and
    C{workers=}, C{labels=}, C{commands=} (each repeatable) to scope it;
    blank lines and C{#} comments are skipped.
    """
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise AuthConfigError(f"cannot read API tokens: {e}") from None
    tokens = []
    for number, line in enumerate(lines, 1):
        try:
            words = shlex.split(line, comments=True)
            if not words:
                continue
            value, read_only, name, scope = parse_token_line(words, unnamed or f"token-{number}")
        except ValueError as e:
            raise AuthConfigError(f"{path}:{number}: {e}") from None
        tokens.append(APIToken(value.encode("utf-8"), read_only, name, scope))
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
