"""
The master, a folder per concern (see docs/architecture.md):

- L{cluster}: the domain — pools and jobs (model, events), who is connected
  (roster), sending jobs and taking their output (dispatch), history,
  targets, job specs, health and schedules. It imports no HTTP and no
  database engine.
- L{links}: the worker port — one protocol per connected worker.
- L{peers}: several masters on one PostgreSQL store — mail, relayed links,
  replicas, the lease, the LISTEN connection.
- L{store}: where pools, tokens, schedules and deliveries are kept, in
  SQLite or PostgreSQL.
- L{http}: the REST API, its guards and limits, streaming, metrics, the
  OpenAPI document and the dashboard.
- L{access}: API tokens and what a scoped token may do.
- L{transfers}: files pushed to workers and fetched from them.
- L{webhooks}: notifications of ended pools, and the checks on where
  outbound requests may go.
- L{tap} and L{services}: the twistd plugin's service construction.

The master needs Python 3.11; a worker, and all it imports, runs on 3.9
(tests/unit/test_worker_python.py holds it to that).  On an older Python
the master stops at once, saying so in one line.
"""

import sys

#: The oldest Python the master runs on.
MASTER_PYTHON = (3, 11)

if sys.version_info < MASTER_PYTHON:
    raise SystemExit(
        f"pcci-master needs Python {'.'.join(map(str, MASTER_PYTHON))} or newer, and this is"
        f" {sys.version.split()[0]}: run the master on a newer Python (a worker runs on 3.9 or newer)"
    )
