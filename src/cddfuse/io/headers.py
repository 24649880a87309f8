"""Image sizes read from file headers that Pillow does not parse, before anything is decoded.

OpenCV decodes some files whose headers Pillow cannot read: Radiance HDR (``#?RADIANCE``), colour
PFM (``PF``), PAM (``P7``) and TIFFs Pillow has no mode for (float RGB/RGBA). Their size must be
known before decoding -- a 25 MB run-length-encoded HDR can ask for 20000 x 20000 float pixels (4.8 GB)
-- so this module reads it the way OpenCV's own readers do, from at most :data:`MAX_HEADER` bytes.
Every parser returns ``(width, height)`` or ``None`` when the bytes are not such a header; none of
them raises on any input.
"""
from __future__ import annotations

import re
import struct
from collections.abc import Callable

__all__ = ["header_size", "parse_hdr", "parse_pfm", "parse_pam", "parse_tiff", "MAX_HEADER"]

#: How many bytes of a file the header parsers look at (OpenCV's readers read no more before allocating).
MAX_HEADER = 64 * 1024

Size = tuple[int, int]

_HDR_RESOLUTION = re.compile(rb"-Y (\d{1,10}) \+X (\d{1,10})")


def parse_hdr(head: bytes) -> Size | None:
    """Radiance RGBE: ``#?RADIANCE`` or ``#?RGBE``, header lines up to an empty line, then ``-Y H +X W`` (the
    only orientation OpenCV reads)."""
    if not (head.startswith(b"#?RADIANCE") or head.startswith(b"#?RGBE")):
        return None
    end = head.find(b"\n\n")
    if end < 0:
        return None
    line = head[end + 2:].split(b"\n", 1)[0]
    m = _HDR_RESOLUTION.match(line)
    if m is None:
        return None
    return int(m.group(2)), int(m.group(1))


def _pnm_tokens(head: bytes, start: int, count: int) -> list[bytes] | None:
    """The first ``count`` whitespace-separated tokens after ``start`` (``#`` comments skipped)."""
    tokens: list[bytes] = []
    for line in head[start:].split(b"\n"):
        line = line.split(b"#", 1)[0]
        tokens.extend(line.split())
        if len(tokens) >= count:
            return tokens[:count]
    return None


def _positive(*tokens: bytes) -> list[int] | None:
    if not all(t.isdigit() and len(t) <= 10 for t in tokens):
        return None
    return [int(t) for t in tokens]


def parse_pfm(head: bytes) -> Size | None:
    """Portable float map: ``PF`` (colour) or ``Pf`` (gray), then width, height and the scale."""
    if head[:2] not in (b"PF", b"Pf") or len(head) < 3 or head[2:3] not in b" \t\r\n":
        return None
    tokens = _pnm_tokens(head, 2, 2)
    values = _positive(*tokens) if tokens else None
    return (values[0], values[1]) if values else None


def parse_pam(head: bytes) -> Size | None:
    """Portable arbitrary map: ``P7`` then ``WIDTH w`` / ``HEIGHT h`` lines up to ``ENDHDR``."""
    if not head.startswith(b"P7") or len(head) < 3 or head[2:3] not in b" \t\r\n":
        return None
    width = height = None
    for line in head[3:].split(b"\n"):
        words = line.split(b"#", 1)[0].split()
        if not words:
            continue
        if words[0] == b"ENDHDR":
            break
        if len(words) == 2 and words[0] in (b"WIDTH", b"HEIGHT"):
            value = _positive(words[1])
            if value is None:
                return None
            if words[0] == b"WIDTH":
                width = value[0]
            else:
                height = value[0]
    else:
        return None
    return (width, height) if width is not None and height is not None else None


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}  # SHORT, LONG, LONG8


def parse_tiff(head: bytes, read_at: Callable[[int, int], bytes] | None = None) -> Size | None:
    """ImageWidth and ImageLength of a TIFF's first image (classic or BigTIFF, either byte order).

    ``read_at(offset, n)`` reads beyond ``head`` when the first directory lies further in the file.
    """
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        big = False
    elif head[:4] in (b"II+\x00", b"MM\x00+"):
        big = True
    else:
        return None
    end = "<" if head[:2] == b"II" else ">"
    try:
        if big:
            (offset,) = struct.unpack(end + "Q", head[8:16])
        else:
            (offset,) = struct.unpack(end + "I", head[4:8])
        read = read_at or (lambda at, n: head[at:at + n])
        count_size, entry_size = (8, 20) if big else (2, 12)
        raw_count = read(offset, count_size)
        (count,) = struct.unpack(end + ("Q" if big else "H"), raw_count)
        if not 0 < count <= 4096:
            return None
        entries = read(offset + count_size, count * entry_size)
        if len(entries) < count * entry_size:
            return None
        found: dict[int, int] = {}
        for i in range(count):
            e = entries[i * entry_size:(i + 1) * entry_size]
            tag, kind = struct.unpack(end + "HH", e[:4])
            if tag not in (256, 257) or kind not in _TIFF_TYPES:
                continue
            code, size = _TIFF_TYPES[kind]
            value_at = 12 if big else 8
            (found[tag],) = struct.unpack(end + code, e[value_at:value_at + size])
    except struct.error:
        return None
    if 256 not in found or 257 not in found:
        return None
    return found[256], found[257]


_PARSERS = (("HDR", parse_hdr), ("PFM", parse_pfm), ("PAM", parse_pam))


def header_size(head: bytes, read_at: Callable[[int, int], bytes] | None = None) -> tuple[str, Size] | None:
    """``(format, (width, height))`` for the formats of this module, else ``None``."""
    for name, parse in _PARSERS:
        size = parse(head)
        if size is not None:
            return name, size
    size = parse_tiff(head, read_at)
    return ("TIFF", size) if size is not None else None
