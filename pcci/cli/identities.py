"""
C{pcci join-token …} and C{pcci workers pending|approve|deny|revoke}: workers'
identities, through the REST API (C{/join-tokens}, C{/identities},
C{/workers/<name>/…}).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from pcci.cli.config import Config
from pcci.cli.render import json_out, labels_text, table


def _in(seconds: float) -> str:
    """A time from now, in words a person reads: in 45m, in 1h, in 2d, or 3h ago."""
    left = seconds - time.time()
    minutes = round(abs(left) / 60)
    if minutes >= 1440:
        text = f"{round(minutes / 1440)}d"
    else:
        text = f"{round(minutes / 60)}h" if minutes >= 60 else f"{minutes}m"
    return f"in {text}" if left >= 0 else f"{text} ago"


async def create_join_token(cfg: Config, asked: dict[str, Any], installed: bool) -> int:
    answer = await cfg.client().call("POST", "/join-tokens", asked)
    # An older master's command is the join line, as is one from a master that serves no installs.
    joining = answer.get("join_command", answer["command"])
    line = joining if installed else answer["command"]
    where = "where pcci is installed" if line == joining else "as root"
    cfg.err.write(
        f"pcci: join token {answer['id']} made for {answer['name']!r}, {answer['uses']} use(s),"
        f" ends {_in(answer['expires_at'])}: this is the only time it is shown\n"
        f"pcci: on the new machine, {where}, run:\n"
    )
    cfg.out.write(line + "\n")
    return 0


async def list_join_tokens(cfg: Config, as_json: bool) -> int:
    tokens = await cfg.client().call("GET", "/join-tokens")
    if as_json:
        return json_out(cfg.out, tokens)
    rows = [
        [t["id"], t["state"], t["name"], f"{t['used']}/{t['uses']}", labels_text(t["labels"]),
         "yes" if t["approve"] else "no", _in(t["expires_at"]), t["created_by"]]
        for t in tokens
    ]
    cfg.terminal().print_table(table(["ID", "STATE", "NAMES", "USED", "LABELS", "APPROVE", "ENDS", "MADE BY"], rows))
    return 0


async def revoke_join_token(cfg: Config, token_id: str) -> int:
    answer = await cfg.client().call("DELETE", "/join-tokens/" + quote(token_id, safe=""))
    cfg.err.write(f"pcci: {answer['message']}\n")
    return 0


async def list_identities(cfg: Config, pending: bool, as_json: bool) -> int:
    found = await cfg.client().call("GET", "/workers/pending" if pending else "/identities")
    if as_json:
        return json_out(cfg.out, found)
    rows = [
        [i["name"], i["state"], i["fingerprint"], i["how"], labels_text(i.get("labels", {})), i.get("address", "-"),
         _in(i["joined_at"])]
        for i in found
    ]
    cfg.terminal().print_table(table(["NAME", "STATE", "KEY", "BY", "LABELS", "FROM", "JOINED"], rows))
    if pending and not found:
        cfg.err.write("pcci: no worker waits for approval\n")
    return 0


async def decide(cfg: Config, name: str, decision: str) -> int:
    answer = await cfg.client().call("POST", f"/workers/{quote(name, safe='')}/{decision}")
    cfg.err.write(f"pcci: {answer['message']} ({answer['fingerprint']})\n")
    return 0
