"""The header of a safetensors file, read without its data: what a weight file holds
(names, dtypes, shapes, byte ranges) for the memory planner, the loader of a split
model's share and the conversion, none of which should read gigabytes to learn it.

The format: an 8-byte little-endian header length, then a JSON header mapping each
tensor's name to its dtype, shape and [start, end) data offsets (and an optional
`__metadata__` entry of strings), then the data.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """The parsed JSON header and the offset where tensor data starts."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return header, 8 + n
