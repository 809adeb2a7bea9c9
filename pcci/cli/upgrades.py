"""
C{pcci workers upgrade}: workers upgraded to the master's version, a batch
at a time (C{POST /workers/upgrade}), followed until each is back or says
why not (C{GET /workers/upgrade/<id>}).
"""

from __future__ import annotations

import time
from typing import Any

from pcci.cli.config import Config
from pcci.cli.render import json_out, table

#: Seconds between looks at a rollout.
POLL = 1.0
#: How each worker's upgrade may end well.
WELL = ("done", "current")


async def upgrade_workers(cfg: Config, body: dict[str, Any], as_json: bool) -> int:
    client = cfg.client()
    rollout = await client.call("POST", "/workers/upgrade", body)
    cfg.err.write(f"pcci: {rollout['message']} (upgrade {rollout['id']})\n")
    seen: dict[str, str] = {}
    while True:
        for name, worker in sorted(rollout["workers"].items()):
            if seen.get(name) != worker["state"] and worker["state"] != "waiting":
                seen[name] = worker["state"]
                if not as_json:
                    reason = f": {worker['reason']}" if worker["reason"] else ""
                    cfg.err.write(f"{name}: {worker['state']}{reason}\n")
        if rollout["state"] == "ended":
            break
        time.sleep(POLL)
        rollout = await client.call("GET", f"/workers/upgrade/{rollout['id']}")
    if as_json:
        json_out(cfg.out, rollout)
    else:
        rows = [
            [name, w["state"], w["from"] or "-", w["version"] or "-", w["reason"]]
            for name, w in sorted(rollout["workers"].items())
        ]
        cfg.terminal().print_table(table(["NAME", "UPGRADE", "FROM", "VERSION", "WHY"], rows))
    return 0 if all(w["state"] in WELL for w in rollout["workers"].values()) else 1
