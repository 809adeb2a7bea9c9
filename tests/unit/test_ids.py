from __future__ import annotations

import uuid

from pcci.ids import UUID7Generator


def test_ids_in_one_millisecond_are_unique_and_ordered() -> None:
    new_id = UUID7Generator(now_ms=lambda: 1_700_000_000_000)
    ids = [new_id() for _ in range(10_000)]  # overflows the 12-bit counter
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_ids_stay_ordered_when_the_clock_steps_back() -> None:
    times = iter([2_000, 1_000, 1_000, 3_000])
    new_id = UUID7Generator(now_ms=lambda: next(times))
    ids = [new_id() for _ in range(4)]
    assert ids == sorted(ids)


def test_ids_are_version_7_with_the_timestamp() -> None:
    value = uuid.UUID(UUID7Generator(now_ms=lambda: 0x0123456789AB)())
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert value.int >> 80 == 0x0123456789AB
