"""
Facts and queries with real workers: pcci's own facts and each worker's
facts.d, queries choosing a pool's workers, counts by fact, a refresh.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cluster import Cluster, poll
from test_cli_e2e import pcci

pytestmark = pytest.mark.e2e


def worker_with_facts(cluster: Cluster, name: str, files: dict[str, str]) -> Path:
    state = cluster.directory / f"state-{name}"
    (state / "facts.d").mkdir(parents=True)
    for file, text in files.items():
        (state / "facts.d" / file).write_text(text)
    cluster.start_worker(name, "--state-dir", str(state))
    return state


def test_queries_counts_and_a_refresh_over_real_facts(own_cluster: Cluster) -> None:
    c = own_cluster
    c.start_master()
    worker_with_facts(c, "n01", {"location.json": '{"rack": 3, "room": "b12"}'})
    worker_with_facts(c, "n02", {"location.json": '{"rack": 3, "room": "b12"}'})
    state = worker_with_facts(c, "n05", {"location.json": '{"rack": 5, "room": "b14"}', "team": "infra=yes\n"})
    poll(lambda: len([w for w in c.request("GET", "/facts")[1] if w["facts"]]) == 3, what="three workers' facts")
    (n05,) = [w for w in c.request("GET", "/facts?workers=n05")[1]]
    assert n05["facts"]["location"] == {"rack": 5, "room": "b14"} and n05["facts"]["team"] == {"infra": "yes"}
    assert n05["facts"]["cpus"] == os.cpu_count() and n05["facts"]["os"]["id"]
    # A query chooses a pool's workers; it combines with -w and -x.
    done = pcci(c, "run", "-q", "location.rack>=4 or location.room=b12", "-x", "n02", "--", "echo", "hi")
    assert (done.returncode, sorted(done.stdout.splitlines())) == (0, ["n01: hi", "n05: hi"])
    done = pcci(c, "run", "-n", "-w", "n*", "-q", "not team.infra=yes", "--", "true")
    assert done.stdout.split() == ["n01", "n02"]
    # Counts by fact, each group's names folded.
    done = pcci(c, "facts", "--count-by", "location.room,location.rack", "--json")
    assert json.loads(done.stdout) == [
        {"count": 2, "location.room": "b12", "location.rack": "3", "workers": "n[01-02]"},
        {"count": 1, "location.room": "b14", "location.rack": "5", "workers": "n05"},
    ]
    # A machine's facts change; asked, it tells them at once.
    (state / "facts.d" / "location.json").write_text('{"rack": 6, "room": "b14"}')
    assert pcci(c, "facts", "refresh", "-w", "n05").returncode == 0
    poll(lambda: c.request("GET", "/facts?workers=n05&fields=location.rack")[1][0]["fields"] == {"location.rack": 6},
         what="the new rack")
    # A bad query says where; a fact no worker has is unknown.
    done = pcci(c, "facts", "-q", "location.rack>")
    assert done.returncode != 0 and "expected a value at character 15" in done.stderr
    done = pcci(c, "run", "-q", "location.row=1", "--", "true")
    assert done.returncode != 0 and "no worker has a fact location.row" in done.stderr
