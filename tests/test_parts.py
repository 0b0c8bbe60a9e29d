"""Part boundaries follow from byte offsets alone and fit S3's multipart limits."""

from __future__ import annotations

import itertools

import pytest

from cefmp4.common.parts import (
    MAX_OBJECT_BYTES,
    MAX_PART_BYTES,
    MAX_PARTS,
    MIB,
    MIN_PART_BYTES,
    Part,
    part_at,
    part_offset,
    part_size,
    plan_parts,
)

GIB = 1024 * MIB
TIB = 1024 * GIB
BASES = [5 * MIB, 10 * MIB, 64 * MIB, 5120 * MIB]


def test_s3_limits_are_the_documented_ones() -> None:
    assert (MAX_PARTS, MIN_PART_BYTES, MAX_PART_BYTES, MAX_OBJECT_BYTES) == (
        10_000,
        5 * MIB,
        5 * GIB,
        5 * TIB,
    )


@pytest.mark.parametrize("base", BASES)
def test_every_part_size_is_within_s3_limits(base: int) -> None:
    sizes = [part_size(number, base) for number in range(1, MAX_PARTS + 1)]

    assert min(sizes) >= 5 * MIB
    assert max(sizes) <= 5 * GIB
    assert sizes[0] == base


@pytest.mark.parametrize("base", BASES)
def test_ten_thousand_parts_hold_a_five_tib_object(base: int) -> None:
    total = sum(part_size(number, base) for number in range(1, MAX_PARTS + 1))

    assert total >= 5 * TIB


@pytest.mark.parametrize("base", BASES)
def test_part_sizes_never_shrink(base: int) -> None:
    sizes = [part_size(number, base) for number in range(1, MAX_PARTS + 1)]

    assert all(a <= b for a, b in itertools.pairwise(sizes))


@pytest.mark.parametrize("base", BASES)
def test_part_offset_is_the_sum_of_the_sizes_before_it(base: int) -> None:
    expected = 0
    for number in range(1, MAX_PARTS + 2):
        assert part_offset(number, base) == expected, number
        expected += part_size(number, base)


def _boundary_numbers() -> list[int]:
    # the first parts, the tier edges (every 900 parts) and the last parts S3 allows
    tiers = [edge + delta for edge in range(900, MAX_PARTS, 900) for delta in (0, 1, 2)]
    return sorted({1, 2, 3, *tiers, MAX_PARTS - 1, MAX_PARTS})


@pytest.mark.parametrize("base", BASES)
def test_part_at_agrees_with_part_offset_at_every_boundary(base: int) -> None:
    for number in _boundary_numbers():
        start = part_offset(number, base)
        size = part_size(number, base)

        assert part_at(start, base) == Part(number, start, size)
        assert part_at(start + 1, base) == Part(number, start, size)
        assert part_at(start + size - 1, base) == Part(number, start, size)
        if number > 1:
            before = part_offset(number - 1, base)
            assert part_at(start - 1, base) == Part(number - 1, before, part_size(number - 1, base))


def test_part_at_zero_is_the_first_part() -> None:
    assert part_at(0, 5 * MIB) == Part(1, 0, 5 * MIB)


def test_first_tier_change_doubles_the_part_size() -> None:
    base = 5 * MIB

    assert part_size(900, base) == 5 * MIB
    assert part_size(901, base) == 10 * MIB
    assert part_offset(901, base) == 900 * 5 * MIB
    assert part_size(MAX_PARTS, base) == 5 * GIB


@pytest.mark.parametrize("base", [5 * MIB, 10 * MIB, 64 * MIB])
@pytest.mark.parametrize("parts", [0, 1, 3, 899, 900, 901, 1805])
def test_non_final_plan_has_only_whole_contiguous_parts(base: int, parts: int) -> None:
    size = part_offset(parts + 1, base) + base // 2  # whole parts plus half a part more

    plan = plan_parts(size, base, final=False)

    assert [part.number for part in plan] == list(range(1, parts + 1))
    offset = 0
    for part in plan:
        assert part.offset == offset
        assert part.length == part_size(part.number, base)
        offset += part.length
    assert offset <= size


@pytest.mark.parametrize("base", [5 * MIB, 10 * MIB, 64 * MIB])
@pytest.mark.parametrize("extra", [1, 12_345, 5 * MIB - 1])
def test_final_plan_adds_the_tail_so_lengths_sum_to_the_size(base: int, extra: int) -> None:
    size = part_offset(902, base) + extra

    plan = plan_parts(size, base, final=True)

    assert len(plan) == 902
    assert sum(part.length for part in plan) == size
    assert plan[-1] == Part(902, part_offset(902, base), extra)
    assert plan[:-1] == plan_parts(size, base, final=False)


def test_final_plan_of_an_empty_file_is_one_empty_part() -> None:
    assert plan_parts(0, 5 * MIB, final=True) == [Part(1, 0, 0)]


def test_non_final_plan_of_an_empty_file_is_empty() -> None:
    assert plan_parts(0, 5 * MIB, final=False) == []


@pytest.mark.parametrize("final", [False, True])
def test_file_of_exactly_one_part_is_one_part(final: bool) -> None:
    base = 8 * MIB

    assert plan_parts(base, base, final=final) == [Part(1, 0, base)]


def test_one_byte_over_a_part_boundary_leaves_a_one_byte_tail() -> None:
    base = 5 * MIB

    assert plan_parts(2 * base + 1, base, final=False) == [
        Part(1, 0, base),
        Part(2, base, base),
    ]
    assert plan_parts(2 * base + 1, base, final=True) == [
        Part(1, 0, base),
        Part(2, base, base),
        Part(3, 2 * base, 1),
    ]


def test_file_smaller_than_a_part_has_no_part_until_final() -> None:
    base = 10 * MIB
    size = base - 1

    assert plan_parts(size, base, final=False) == []
    assert plan_parts(size, base, final=True) == [Part(1, 0, size)]


@pytest.mark.parametrize("base", [0, 1, 5 * MIB - 1])
def test_base_below_s3_minimum_is_refused(base: int) -> None:
    with pytest.raises(ValueError, match="minimum"):
        plan_parts(100 * MIB, base, final=True)
