"""
The master's REST API (Klein): PCCI 1.x's routes (C{POST /job},
C{GET /pool/<id>}, C{GET /pools}, C{GET /workers}, C{PUT /kill/<id>}) kept
as they were, and the others, one module per noun (L{pools}, L{files},
L{schedules}, L{tokens}, L{identities}, L{install}, L{workers}, L{shells}, L{facts}, L{meta}) on one Klein app.

It reads and changes the L{ClusterState}; it never touches a connection.
Every answer is JSON, errors included: C{{"message": ...}} with a status
that says what went wrong.  See C{docs/api.md}.
"""

from __future__ import annotations

from pcci.master.http.facts import FactRoutes
from pcci.master.http.files import FileRoutes
from pcci.master.http.identities import IdentityRoutes
from pcci.master.http.install import InstallRoutes
from pcci.master.http.meta import MetaRoutes
from pcci.master.http.pools import PoolRoutes
from pcci.master.http.schedules import ScheduleRoutes
from pcci.master.http.shells import ShellRoutes
from pcci.master.http.tokens import TokenRoutes
from pcci.master.http.workers import WorkerRoutes


class MasterAPI(
    PoolRoutes, FileRoutes, ScheduleRoutes, TokenRoutes, IdentityRoutes, InstallRoutes, WorkerRoutes, ShellRoutes,
    FactRoutes, MetaRoutes,
):
    """The REST routes, over one L{ClusterState}: every noun's, on one Klein app."""
