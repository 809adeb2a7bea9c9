"""
Worker labels: C{key} or C{key=value} facts a worker carries (C{os=linux},
C{gpu}, C{rack=3}) so a pool can target workers by what they are.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterable, Mapping

#: Label keys, and the values they may hold.
LABEL_KEY = re.compile(r"[A-Za-z0-9_./-]{1,63}\Z")
LABEL_VALUE = re.compile(r"[A-Za-z0-9_.:@/+-]{0,255}\Z")

#: Most labels a worker may carry.
MAX_LABELS = 64


def parse_label(text: str) -> tuple[str, str]:
    """
    C{key} or C{key=value} as a pair; a bare key has the value C{""}.

    @raise ValueError: a key or value with characters labels cannot hold.
    """
    key, _, value = text.partition("=")
    if not LABEL_KEY.match(key):
        raise ValueError(
            f"label {text!r}: a key is 1 to 63 letters, digits and any of _ . / -"
        )
    if not LABEL_VALUE.match(value):
        raise ValueError(
            f"label {text!r}: a value is up to 255 letters, digits and any of _ . : @ / + -"
        )
    return key, value


def check_labels(labels: object) -> dict[str, str]:
    """
    Labels as a worker's hello carries them (an object of strings), checked.

    @raise ValueError: saying what is wrong with them.
    """
    if labels is None:
        return {}
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        raise ValueError(f"labels must be an object of at most {MAX_LABELS} strings")
    for key, value in labels.items():
        if not isinstance(value, str):
            raise ValueError(f"label {key!r} is not a string")
        parse_label(f"{key}={value}")
    return dict(labels)


def has_labels(held: Mapping[str, str], wanted: Iterable[str]) -> bool:
    """Whether labels C{held} satisfy every C{key} or C{key=value} wanted."""
    for want in wanted:
        key, sep, value = want.partition("=")
        if key not in held or (sep and held[key] != value):
            return False
    return True


def default_labels() -> dict[str, str]:
    """The labels every worker carries: its operating system and architecture."""
    return {
        "os": platform.system().lower() or "unknown",
        "arch": platform.machine().lower() or "unknown",
    }
