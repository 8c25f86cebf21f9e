from __future__ import annotations

from shared.db.leases import Lease, fair_targets


def leases(*wanted: int) -> list[Lease]:
    return [Lease(f"p{i}", w, 0) for i, w in enumerate(wanted)]


def test_everyone_gets_what_they_want_when_it_fits() -> None:
    assert fair_targets(leases(4, 8, 1), 13) == {"p0": 4, "p1": 8, "p2": 1}


def test_an_overfull_budget_gives_one_each_then_deals_out_the_rest() -> None:
    targets = fair_targets(leases(4, 4), 5)
    assert targets == {"p0": 3, "p1": 2}
    assert sum(targets.values()) == 5


def test_the_newest_lease_waits_when_not_even_one_connection_is_left() -> None:
    assert fair_targets(leases(2, 2, 2), 2) == {"p0": 1, "p1": 1, "p2": 0}


def test_nobody_is_dealt_more_than_they_want() -> None:
    targets = fair_targets(leases(1, 8, 8), 10)
    assert targets["p0"] == 1
    assert targets["p1"] + targets["p2"] == 9
    assert max(targets.values()) <= 8
