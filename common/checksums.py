"""CRC32s of whole objects from the CRC32s of their parts, as cefmp4 and S3 compute them.

`whole_crc32` is the CRC32 of the object's bytes, combined from the parts' CRC32s (zlib's
crc32_combine) without reading them again; `s3_composite_crc32` is the checksum S3 reports
for a multipart object uploaded with CRC32 part checksums.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Collection

from cefmp4.common.streamstate import PartRecord

_POLY = 0xEDB88320  # CRC-32, bit-reflected


def _multiply(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC polynomial, in the reflected representation."""
    m = 1 << 31
    product = 0
    while True:
        if a & m:
            product ^= b
            if not a & (m - 1):
                return product
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _powers() -> list[int]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multiply(table[-1], table[-1]))
    return table


_X_TO_2_TO_N = _powers()  # x^(2^n) modulo the polynomial


def _x_to_8n(n: int) -> int:
    """x^(8n) modulo the polynomial."""
    power = 1 << 31  # x^0
    k = 3
    while n:
        if n & 1:
            power = _multiply(_X_TO_2_TO_N[k & 31], power)
        n >>= 1
        k += 1
    return power


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """CRC32 of A+B from CRC32(A), CRC32(B) and len(B)."""
    return _multiply(_x_to_8n(length2), crc1) ^ crc2


def whole_crc32(parts: Collection[PartRecord]) -> int:
    crc = 0
    for part in parts:
        crc = crc32_combine(crc, part.crc32, part.length)
    return crc


def s3_composite_crc32(parts: Collection[PartRecord]) -> str:
    """The checksum S3 reports for a multipart object: CRC32 of the parts' CRC32s, `-N`."""
    joined = b"".join(part.crc32.to_bytes(4, "big") for part in parts)
    digest = zlib.crc32(joined).to_bytes(4, "big")
    return f"{base64.b64encode(digest).decode()}-{len(parts)}"
