"""
The OpenAPI 3 description of the REST API, served at C{/openapi.json}.

The document is a data file beside this module (C{openapi.yaml}).  Filled
in here: the version, and the fields of a pool request (L{pcci.request})
in each schema marked C{x-pcci-job-fields}.  A test holds the document to
the routes the master serves.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

import yaml

from pcci import __version__
from pcci.request import openapi_properties


@cache
def openapi_document() -> dict[str, Any]:
    text = files(__package__).joinpath("openapi.yaml").read_text(encoding="utf-8")
    # libyaml's loader where PyYAML was built with it: 30 ms, not 270.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document: dict[str, Any] = yaml.load(text, Loader=loader)
    document["info"]["version"] = __version__
    for schema in document["components"]["schemas"].values():
        if schema.pop("x-pcci-job-fields", False):
            schema["properties"] = {**schema.get("properties", {}), **openapi_properties()}
    return document
