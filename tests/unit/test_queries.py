"""The query grammar over facts and labels (L{pcci.master.cluster.queries})."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcci.master.cluster.factindex import FactIndex
from pcci.master.cluster.queries import (
    KEYWORDS,
    OPERATORS,
    And,
    Compare,
    In,
    Not,
    Or,
    QueryError,
    matches,
    parse,
    unparse,
)

PI = {
    "name": "pi07",
    "os": {"id": "debian", "version": "12", "family": "debian"},
    "cpus": 4,
    "memory": 8 * 2**30,
    "gpu": {"count": 0, "models": []},
    "filesystems": [{"mount": "/", "size": 30 * 2**30}, {"mount": "/data", "size": 2**40}],
    "virtualization": "none",
    "labels": {"rack": "a", "os": "linux"},
    "container": False,
}


@pytest.mark.parametrize(("text", "expected"), [
    ("os.id=debian and cpus>=4 and not gpu.count=0", False),
    ("os.id=debian and cpus>=4 and gpu.count=0", True),
    ("os.version>=11 and os.version<12.1", True),
    ("memory>=8G and memory<9G", True),
    ("filesystems.mount=/data", True),
    ("filesystems.size>1T", False),
    ("filesystems.size>=1T", True),
    ("labels.rack in (b, a)", True),
    ("name~'pi0*' and not (labels.rack=b or virtualization!=none)", True),
    ("container=false", True),
    ("gpu.vendor=nvidia", False),
    ("not gpu.vendor=nvidia", True),
    ("gpu.vendor!=nvidia", False),  # a fact the worker lacks: false, even unequal
    ("os.ID=debian", False),
    ("cpus=4.0", True),
])
def test_queries_select_as_documented(text: str, expected: bool) -> None:
    assert matches(parse(text), PI) is expected


@pytest.mark.parametrize(("text", "why", "at"), [
    ("", "the query is empty", 0),
    ("os.id=", "expected a value", 6),
    ("os.id debian", "expected one of = != < <= > >= ~ in", 6),
    ("cpus>=4 and", "expected a fact's name", 11),
    ("(cpus>4", "expected ')'", 7),
    ("cpus>4)", "expected 'and', 'or' or the end", 6),
    ("name='pi07", "a text opened with ' is not closed", 5),
    ("os.=x", "expected a name after '.'", 3),
    ("and=1", "expected a fact's name, not 'and'", 0),
    ("labels.rack in (a b)", "expected ',' or ')'", 18),
])
def test_a_bad_query_says_where(text: str, why: str, at: int) -> None:
    with pytest.raises(QueryError) as error:
        parse(text)
    assert (error.value.why, error.value.at) == (why, at)
    assert str(error.value).endswith("\n  " + " " * at + "^")


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True).filter(lambda n: n.lower() not in KEYWORDS)
values = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8).filter(
    lambda v: not ("'" in v and '"' in v)
)
paths = st.lists(names, min_size=1, max_size=3).map(tuple)


def queries_of(paths: st.SearchStrategy, values: st.SearchStrategy, most: int) -> st.SearchStrategy:
    """Queries of comparisons of these paths and values, combined by not, and, or."""
    leaves = st.one_of(
        st.builds(Compare, paths, st.sampled_from(OPERATORS), values),
        st.builds(In, paths, st.lists(values, min_size=1, max_size=3).map(tuple)),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.builds(Not, inner),
            st.builds(And, st.lists(inner, min_size=2, max_size=3).map(tuple)),
            st.builds(Or, st.lists(inner, min_size=2, max_size=3).map(tuple)),
        ),
        max_leaves=most,
    )


queries = queries_of(paths, values, 8)


@given(queries)
def test_a_query_and_its_printed_form_round_trip(query) -> None:
    assert parse(unparse(query)) == query


# The index answers as the walk does (L{pcci.master.cluster.factindex})

FIELDS = ("os", "cpus", "rack", "tags", "disks")
scalars = st.one_of(
    st.sampled_from(["debian", "rhel", "7", "12", "a*", "true"]), st.integers(-2, 16), st.booleans(),
    st.sampled_from([0.5, 4.0]),
)
documents = st.fixed_dictionaries({}, optional={
    "os": st.fixed_dictionaries({}, optional={"id": scalars, "version": scalars}),
    "cpus": scalars,
    "rack": scalars,
    "tags": st.lists(scalars, max_size=3),
    "disks": st.lists(st.fixed_dictionaries({}, optional={"size": scalars}), max_size=2),
    "labels": st.dictionaries(st.sampled_from(["rack", "role"]), st.sampled_from(["a", "b", "1"]), max_size=2),
})
fleet_paths = st.sampled_from([
    ("os", "id"), ("os", "version"), ("os",), ("cpus",), ("rack",), ("tags",), ("disks", "size"), ("labels", "rack"),
    ("name",), ("missing",),
])
fleet_values = st.sampled_from(["debian", "7", "12", "4", "0.5", "a*", "true", "false", "-1", "a", "w1"])
fleet_queries = queries_of(fleet_paths, fleet_values, 6)


@given(st.lists(documents, max_size=8), fleet_queries, st.lists(documents, max_size=3))
def test_the_index_chooses_as_the_walk_does(fleet, query, changed) -> None:
    """Before and after some workers' facts change, and one is forgotten."""
    workers = {f"w{i}": {**facts, "name": f"w{i}"} for i, facts in enumerate(fleet)}
    index = FactIndex(lambda: workers, workers.get)

    def walked() -> list[str]:
        return [name for name, document in workers.items() if matches(query, document)]

    assert index.chosen(query, workers) == walked()
    for i, facts in enumerate(changed):
        workers[f"w{i}"] = {**facts, "name": f"w{i}"}
        index.changed(f"w{i}")
    if workers:
        gone = next(iter(workers))
        del workers[gone]
        index.changed(gone)
    assert index.chosen(query, workers) == walked()


def test_the_index_reads_online_and_health_from_the_documents() -> None:
    workers = {"a": {"name": "a", "online": True, "health": {"load": 3}}, "b": {"name": "b", "online": False}}
    index = FactIndex(lambda: workers, workers.get)
    assert index.chosen(parse("online=true"), workers) == ["a"]
    workers["b"] = {"name": "b", "online": True, "health": {"load": 0.5}}  # no changed(): a heartbeat
    assert index.chosen(parse("online=true and health.load<1"), workers) == ["b"]
    assert index.has(("cpus",)) is False and index.has(("name",)) is True
