"""
C{pcci facts}: what the workers told of their machines, as a table, as
JSON, or counted by some facts (C{--count-by os.id,os.version}), each group
with its workers folded into a node set, as clush does; and C{pcci facts
refresh}.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from pcci.cli.config import Config
from pcci.cli.render import json_out, size_text, table
from pcci.nodes import fold

#: The facts a table shows when no --fields are given.
DEFAULT_FIELDS = ("os.id", "os.version", "arch", "cpus", "memory", "gpu.count", "virtualization", "pcci")

#: Facts in bytes, shown as sizes (C{--json} keeps the bytes).
SIZES = ("memory", "filesystems.size")


def _targets(options: dict[str, Any]) -> dict[str, Any]:
    """The query arguments that choose workers."""
    chosen: dict[str, Any] = {}
    for key, name in (("targets", "workers"), ("labels", "labels"), ("exclude", "exclude")):
        if options.get(key):
            chosen[name] = ",".join(options[key])
    if options.get("query"):
        chosen["query"] = options["query"]
    return chosen


async def show_facts(cfg: Config, options: dict[str, Any]) -> int:
    count_by = [f for f in (options.get("count_by") or "").split(",") if f]
    fields = count_by or [f for f in (options.get("fields") or "").split(",") if f]
    asked = {**_targets(options), "all": "true" if options.get("every") else None}
    if fields or not options.get("as_json"):
        asked["fields"] = ",".join(fields or DEFAULT_FIELDS)
    workers = await cfg.client().call("GET", "/facts", **asked)
    if options.get("as_json") and not count_by:
        return json_out(cfg.out, workers)
    if count_by:
        return _counted(cfg, workers, count_by, options.get("as_json", False))
    columns = fields or list(DEFAULT_FIELDS)
    rows = [[w["name"], *(_text(w["fields"].get(f), f) for f in columns)] for w in workers]
    cfg.terminal().print_table(table(["NAME", *(c.upper() for c in columns)], rows))
    if not workers:
        cfg.err.write("pcci: no worker selected\n")
    return 0


def _counted(cfg: Config, workers: list[dict[str, Any]], fields: list[str], as_json: bool) -> int:
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for worker in workers:
        groups[tuple(_text(worker["fields"].get(f), f) for f in fields)].append(worker["name"])
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    if as_json:
        return json_out(cfg.out, [
            {"count": len(names), **dict(zip(fields, key)), "workers": fold(names)} for key, names in ordered
        ])
    rows: list[list[Any]] = [[str(len(names)), *key, fold(names)] for key, names in ordered]
    cfg.terminal().print_table(table(["COUNT", *(f.upper() for f in fields), "WORKERS"], rows))
    return 0


def _text(value: Any, path: str) -> str:
    if value is None:
        return "-"
    if path in SIZES and isinstance(value, (int, float, list)):
        sizes = value if isinstance(value, list) else [value]
        if all(isinstance(size, (int, float)) and not isinstance(size, bool) for size in sizes):
            return ",".join(size_text(size) for size in sizes)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


async def refresh_facts(cfg: Config, options: dict[str, Any]) -> int:
    body: dict[str, Any] = {}
    for key, name in (("targets", "workers"), ("labels", "labels"), ("exclude", "exclude")):
        if options.get(key):
            body[name] = list(options[key])
    if options.get("query"):
        body["query"] = options["query"]
    answer = await cfg.client().call("POST", "/facts/refresh", body)
    cfg.err.write(f"pcci: asked {len(answer['asked'])} workers to look again: {fold(answer['asked']) or 'none'}\n")
    for name, why in sorted(answer["not_asked"].items()):
        cfg.err.write(f"pcci: {name} not asked: {why}\n")
    return 0
