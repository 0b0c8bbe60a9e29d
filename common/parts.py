"""Part boundaries as a pure function of the byte offset.

The first TIER_PARTS parts are `base` bytes each; every following tier of TIER_PARTS
parts doubles the size, capped at S3's 5 GiB part maximum. With the smallest base
(5 MiB) the 10,000 parts S3 allows then hold more than 5 TiB, S3's object maximum.
"""

from __future__ import annotations

from typing import NamedTuple

MIB = 1024 * 1024
MIN_PART_BYTES = 5 * MIB
MAX_PART_BYTES = 5 * 1024 * MIB
MAX_PARTS = 10_000
MAX_OBJECT_BYTES = 5 * 1024 * 1024 * MIB
TIER_PARTS = 900


class Part(NamedTuple):
    number: int  # 1-based, as S3 numbers parts
    offset: int
    length: int


def part_size(number: int, base: int) -> int:
    tier = (number - 1) // TIER_PARTS
    return min(base << min(tier, 40), MAX_PART_BYTES)


def part_offset(number: int, base: int) -> int:
    """Byte offset where part `number` starts."""
    offset = 0
    first = 1
    while first < number:
        size = part_size(first, base)
        count = min(number - first, TIER_PARTS - (first - 1) % TIER_PARTS)
        offset += size * count
        first += count
    return offset


def part_at(offset: int, base: int) -> Part:
    """The part that holds byte `offset`."""
    number = 1
    start = 0
    while True:
        size = part_size(number, base)
        count = TIER_PARTS - (number - 1) % TIER_PARTS
        if offset < start + size * count:
            index = (offset - start) // size
            return Part(number + index, start + index * size, size)
        start += size * count
        number += count


def plan_parts(size: int, base: int, *, final: bool) -> list[Part]:
    """Parts covering bytes [0, size): only whole parts unless `final`, then the tail too.

    A final plan of an empty file is one empty part, so a 0-byte file is a 0-byte object.
    """
    if base < MIN_PART_BYTES:
        raise ValueError(f"part size {base} is below S3's minimum of {MIN_PART_BYTES}")
    parts: list[Part] = []
    offset = 0
    number = 1
    while True:
        length = part_size(number, base)
        if offset + length > size:
            break
        parts.append(Part(number, offset, length))
        offset += length
        number += 1
    if final and (offset < size or size == 0):
        parts.append(Part(number, offset, size - offset))
    if len(parts) > MAX_PARTS:
        raise ValueError(f"{size} bytes need more than {MAX_PARTS} parts")
    return parts
