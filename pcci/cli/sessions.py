"""
C{pcci shells}: the shells open and kept; and C{pcci shell --replay ID}: a
kept shell's recording (asciicast v2) played back in this terminal, at its
own pace, each silence cut to a few seconds.
"""

from __future__ import annotations

import io
import json
import time
from datetime import datetime, timezone
from typing import IO, Any, Callable
from urllib.parse import quote

from pcci.cli.client import CLIError
from pcci.cli.config import Config
from pcci.cli.render import json_out, table
from pcci.cli.views import _ago

#: Seconds of silence at most between two events of a replay.
IDLE_LIMIT = 2.0


async def show_shells(cfg: Config, limit: int, as_json: bool) -> int:
    shells = await cfg.client().call("GET", "/shells", limit=limit)
    if as_json:
        return json_out(cfg.out, shells)
    now = datetime.now(timezone.utc)
    rows = [
        [
            s["id"], s["worker"], s["user"] or "-", s["by"], _ago(s["opened_at"], now), _how(s),
            f"{s['bytes_in']}/{s['bytes_out']}", "-" if s["recorded"] is None else f"{s['recorded']}",
            s["cmd"] or "(login)",
        ]
        for s in shells
    ]
    cfg.terminal().print_table(table(
        ["SHELL", "WORKER", "USER", "BY", "OPENED", "ENDED", "IN/OUT", "RECORDED", "COMMAND"], rows
    ))
    return 0


def _how(shell: dict[str, Any]) -> str:
    if shell["open"]:
        return "open"
    if shell["status"] is not None:
        return f"status {shell['status']}"
    return shell["reason"] or "ended"


async def replay_shell(cfg: Config, shell_id: str, speed: float) -> int:
    client = cfg.client()
    path = "/shells/" + quote(shell_id, safe="")
    shell = await client.call("GET", path)
    if shell["recorded"] is None:
        raise CLIError(f"shell {shell_id} was not recorded")
    recording = io.BytesIO()
    await client.download(path + "/recording", recording)
    cfg.err.write(f"pcci: shell {shell_id} of {shell['by']} on {shell['worker']}, opened {shell['opened_at']}"
                  " (Ctrl-C stops)\n")
    play(recording.getvalue(), cfg.out, speed)
    cfg.err.write("\npcci: end of the recording\n")
    return 0


def play(recording: bytes, out: IO[str], speed: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> None:
    """Write an asciicast's output events to C{out}, each at its time (silences cut to L{IDLE_LIMIT})."""
    lines = recording.decode("utf-8", "replace").splitlines()
    if not lines or json.loads(lines[0]).get("version") != 2:
        raise CLIError("not an asciicast v2 recording")
    last = 0.0
    for line in lines[1:]:
        try:
            at, kind, text = json.loads(line)
        except ValueError:
            continue  # a piece cut short: what is whole plays
        if kind != "o":
            continue
        sleep(min(max(at - last, 0.0), IDLE_LIMIT) / speed)
        last = at
        out.write(text)
        out.flush()
