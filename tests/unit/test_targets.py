"""Which workers a request selects: names, node sets, globs, labels, exclude."""

from __future__ import annotations

import pytest

from pcci.labels import check_labels, has_labels, parse_label
from pcci.master.cluster.targets import TargetError, resolve, select
from pcci.nodes import fold, range_size, select_among

ONLINE = {
    "pi01": {"os": "linux", "arch": "aarch64"},
    "pi02": {"os": "linux", "arch": "aarch64", "rack": "2"},
    "pi03": {"os": "linux", "arch": "aarch64", "rack": "2"},
    "gpu1": {"os": "linux", "arch": "x86_64", "gpu": ""},
    "gpu7": {"os": "linux", "arch": "x86_64", "gpu": ""},
    "rack1-node01": {"os": "linux", "arch": "x86_64"},
    "rack2-node01": {"os": "linux", "arch": "x86_64"},
}


def pick(workers=None, labels=(), exclude=(), most=1024) -> list[str]:
    return select(workers, list(labels), list(exclude), ONLINE, most)


def test_names_are_taken_as_given_in_order_once() -> None:
    assert pick(["gpu1", "pi01", "gpu1"]) == ["gpu1", "pi01"]


def test_node_sets_expand_with_zero_padding_kept() -> None:
    assert pick(["pi[01-03]"]) == ["pi01", "pi02", "pi03"]
    assert pick(["gpu[1,7]"]) == ["gpu1", "gpu7"]
    assert pick(["rack[1-2]-node[01]"]) == ["rack1-node01", "rack2-node01"]


def test_comma_lists_as_clush_and_pdsh_users_write_them() -> None:
    assert pick(["pi01,pi03"]) == ["pi01", "pi03"]
    assert pick(["pi[01-02],gpu1"]) == ["pi01", "pi02", "gpu1"]
    assert pick(["gpu*, pi[02,03]"]) == ["gpu1", "gpu7", "pi02", "pi03"]
    assert pick(["pi01,", "gpu1"]) == ["pi01", "gpu1"]
    assert pick(["*"], exclude=["pi[01-03],rack*"]) == ["gpu1", "gpu7"]
    assert resolve(["pi01,pi02"], ["pi01", "pi02"], 10) == ["pi01", "pi02"]
    assert select_among(["pi01,gpu*"], ONLINE) == ["pi01", "gpu1", "gpu7"]


def test_a_comma_list_is_counted_whole_and_names_what_is_missing() -> None:
    with pytest.raises(TargetError, match="more than 3"):
        pick(["pi[01-03],gpu[1-2]"], most=3)
    with pytest.raises(TargetError, match="disconnected workers: pi09"):
        pick(["pi01,pi09"])
    with pytest.raises(TargetError, match="names no worker"):
        pick([" , "])


def test_a_named_or_ranged_worker_that_is_not_online_is_an_error_naming_it() -> None:
    with pytest.raises(TargetError, match="disconnected workers: pi04, gpu2"):
        pick(["pi[01-04]", "gpu[1-2]"])


def test_globs_match_online_workers_only() -> None:
    assert pick(["pi*"]) == ["pi01", "pi02", "pi03"]
    assert pick(["gpu?"]) == ["gpu1", "gpu7"]
    assert pick(["*"]) == list(ONLINE)
    assert pick(["rack[1-2]-*"]) == ["rack1-node01", "rack2-node01"]


def test_a_glob_that_matches_nobody_is_an_error() -> None:
    with pytest.raises(TargetError, match="'arm\\*' matches no worker"):
        pick(["pi01", "arm*"])


def test_labels_keep_the_workers_holding_all_of_them() -> None:
    assert pick(labels=["gpu"]) == ["gpu1", "gpu7"]
    assert pick(labels=["arch=aarch64", "rack=2"]) == ["pi02", "pi03"]
    assert pick(["pi*", "gpu1"], labels=["os=linux", "arch=aarch64"]) == ["pi01", "pi02", "pi03"]


def test_exclude_takes_out_names_ranges_and_globs() -> None:
    assert pick(["*"], exclude=["pi*", "gpu[1]", "ghost"]) == [
        "gpu7", "rack1-node01", "rack2-node01",
    ]


@pytest.mark.parametrize(
    "workers, labels, exclude, why",
    [
        (["pi*"], ["gpu"], [], "no worker selected: workers pi\\* with labels gpu"),
        (["pi01"], [], ["pi01"], "no worker selected: workers pi01 less pi01"),
        (None, ["os=plan9"], [], "no worker selected: the online workers with labels os=plan9"),
        (None, [], [], "give workers, labels, a query, or some of them"),
    ],
)
def test_a_request_that_selects_nobody_says_so(workers, labels, exclude, why) -> None:
    with pytest.raises(TargetError, match=why):
        pick(workers, labels, exclude)


@pytest.mark.parametrize(
    "item, why",
    [
        ("pi[01-", "not a node set"),
        ("pi[a-b]", "not a list of numeric ranges"),
        ("pi[5-1]", "goes backwards"),
        ("pi[1-100000000000]", "more than 1024 workers"),
        ("bad name", "not a worker name"),
    ],
)
def test_malformed_items_are_errors(item: str, why: str) -> None:
    with pytest.raises(TargetError, match=why):
        pick([item])


def test_huge_ranges_are_counted_not_expanded() -> None:
    assert range_size("x[1-1000000000][1-1000]") == 10**12
    assert range_size("x[1-10/2,20]") == 6


def test_a_selection_over_the_most_is_refused() -> None:
    with pytest.raises(TargetError, match="more than 2"):
        pick(["pi*"], most=2)


def test_resolve_against_a_pools_jobs_for_kill() -> None:
    jobs = ["pi01", "pi02", "gpu1"]
    assert resolve(["pi*"], jobs, 10) == ["pi01", "pi02"]
    with pytest.raises(TargetError, match="not in pool p: gpu2"):
        resolve(["gpu[1-2]"], jobs, 10, missing="workers not in pool p")


def test_labels_parse_check_and_match() -> None:
    assert parse_label("gpu") == ("gpu", "")
    assert parse_label("rack=3") == ("rack", "3")
    assert parse_label("zone=eu/west-1") == ("zone", "eu/west-1")
    for bad in ("", "=x", "a b", "k=v v", "k=\x00"):
        with pytest.raises(ValueError):
            parse_label(bad)
    assert check_labels({"os": "linux", "gpu": ""}) == {"os": "linux", "gpu": ""}
    for bad in ([], {"os": 1}, {"a b": "c"}, {str(i): "" for i in range(65)}):
        with pytest.raises(ValueError):
            check_labels(bad)
    assert has_labels({"gpu": "", "os": "linux"}, ["gpu", "os=linux"])
    assert not has_labels({"gpu": ""}, ["gpu=a100"])


def test_names_fold_into_node_sets_for_people() -> None:
    assert fold(["pi01", "pi02", "pi03", "pi07", "gpu1"]) == "gpu1,pi[01-03,07]"
    assert fold([]) == ""
    assert select_among(["pi[01-02]", "g*"], ["pi01", "pi03", "gpu1"]) == ["pi01", "gpu1"]
