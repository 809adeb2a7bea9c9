"""The OpenAPI document (a data file) and the routes the master serves agree."""

from __future__ import annotations

import re

from pcci.master.cluster.model import JOB_STATES, RETRIED_STATES
from pcci.master.http.api import MasterAPI
from pcci.master.http.openapi import openapi_document
from pcci.request import JOB_FIELDS
from pcci.wire import FIGURES

#: Routes that are not the API: the dashboard's page and its files.
NOT_API = {"/", "/ui/", "/ui/{__rest__}"}

METHODS = {"get", "put", "post", "delete", "patch"}


def served() -> set[tuple[str, str]]:
    """Each route Klein serves, as an OpenAPI path and a method."""
    routes = set()
    for rule in MasterAPI.app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([A-Za-z_]+)>", r"{\1}", rule.rule)
        if path in NOT_API:
            continue
        for method in rule.methods or ():
            if method.lower() in METHODS:
                routes.add((path, method.lower()))
    return routes


def documented() -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method in METHODS
    }


def test_every_route_is_documented_and_every_documented_route_is_served() -> None:
    routes, document = served(), documented()
    assert len(routes) > 20
    assert routes - document == set(), "served but not documented"
    assert document - routes == set(), "documented but not served"


def test_path_parameters_are_declared_as_the_routes_name_them() -> None:
    for path, item in openapi_document()["paths"].items():
        named = set(re.findall(r"{([a-z_]+)}", path))
        for method, operation in item.items():
            if method not in METHODS:
                continue
            parameters = item.get("parameters", []) + operation.get("parameters", [])
            declared = {p["name"] for p in parameters if p.get("in") == "path"}
            assert declared == named, (path, method)


def test_the_document_s_vocabularies_are_the_code_s() -> None:
    schemas = openapi_document()["components"]["schemas"]
    job_state = schemas["Job"]["properties"]["state"]["enum"]
    assert job_state == list(JOB_STATES)
    assert schemas["RetryRequest"]["properties"]["states"]["items"]["enum"] == list(RETRIED_STATES)
    assert set(schemas["Health"]["properties"]) == set(FIGURES)


def test_the_document_carries_the_master_s_version() -> None:
    from pcci import __version__

    assert openapi_document()["info"]["version"] == __version__


def test_request_schemas_hold_the_fields_of_a_pool_request_as_declared() -> None:
    schemas = openapi_document()["components"]["schemas"]
    fields = set(JOB_FIELDS)
    assert set(schemas["PoolRequest"]["properties"]) == fields
    assert schemas["PoolRequest"]["properties"]["batch"]["description"] == JOB_FIELDS["batch"].help
    for name in ("ScheduleRequest", "ScheduleChange", "Schedule"):
        assert fields <= set(schemas[name]["properties"]), name
    assert not any("x-pcci-job-fields" in schema for schema in schemas.values())
