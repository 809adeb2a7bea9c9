"""The private Twisted names pcci relies on: there, shaped as expected, used nowhere else."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
from twisted.internet import process
from twisted.internet.selectreactor import SelectReactor

import pcci
from pcci import twisted_internals
from pcci.twisted_internals import HOOKS, check, rebase_timers, spawned_by_twisted


def test_this_twisted_has_every_private_name_pcci_uses() -> None:
    check()


@pytest.mark.parametrize("missing", sorted(HOOKS))
def test_a_twisted_without_one_fails_loudly_naming_it(missing: str) -> None:
    module = types.SimpleNamespace(**vars(process))
    # A Process whose methods hide the real ones by None (getattr finds no hook).
    module.Process = type("Process", (process.Process,), {})
    owner: object = module
    *path, name = missing.split(".")
    for part in path:
        owner = getattr(owner, part)
    setattr(owner, name, None)
    with pytest.raises(ImportError, match=re.escape(missing)):
        check(module)


def test_a_changed_signature_fails_loudly() -> None:
    module = types.SimpleNamespace(**vars(process))
    module._getFileActions = lambda fdState, childToParentFD, doClose, doDup2, extra: []
    with pytest.raises(ImportError, match="_getFileActions takes"):
        check(module)


def test_timers_are_rebased_onto_a_new_clock() -> None:
    reactor = SelectReactor()
    fired: list[str] = []
    reactor.callLater(10, fired.append, "late")
    now = [5000.0]
    rebase_timers(reactor, lambda: now[0])
    (call,) = reactor.getDelayedCalls()
    assert reactor.seconds() == 5000.0 and abs(call.getTime() - 5010.0) < 1
    reactor.callLater(1, fired.append, "soon")  # scheduled on the new clock
    assert sorted(c.getTime() for c in reactor.getDelayedCalls())[0] == 5001.0
    for call in reactor.getDelayedCalls():
        call.cancel()


def test_twisted_children_are_listed() -> None:
    assert isinstance(spawned_by_twisted(), set)


PRIVATE = re.compile(
    r"twisted\.internet import process\b|twisted\.internet\.process\b|reapProcessHandlers"
    r"|\._(pendingTimedCalls|newTimedCalls|listOpenFDs|getFileActions|trySpawnInsteadOfFork"
    r"|setupChild|fork)\b"
)


def test_no_other_module_touches_them() -> None:
    package = Path(pcci.__file__).parent
    mine = Path(twisted_internals.__file__).resolve()
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.resolve() != mine and PRIVATE.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
