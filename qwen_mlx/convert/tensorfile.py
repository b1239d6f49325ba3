"""Streaming safetensors output: the header first, then tensors one at a time, hashed as
they are written, so conversion never holds a whole shard in memory and never reads its
output back to hash it.

The format: 8-byte little-endian header length, a JSON header mapping names to dtype,
shape and [start, end) data offsets, then the data. Reading a header back is the store's
(`store/safetensors_header.py`): the runtime reads weight files too.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import mlx.core as mx

_ALIGN = 8
# safetensors dtype -> (numpy dtype to carry the bytes, itemsize, mlx dtype name)
_DTYPES = {
    "BF16": ("uint16", 2, "bfloat16"),
    "F16": ("float16", 2, "float16"),
    "F32": ("float32", 4, "float32"),
    "U32": ("uint32", 4, "uint32"),
    "I32": ("int32", 4, "int32"),
    "U8": ("uint8", 1, "uint8"),
    "I8": ("int8", 1, "int8"),
    "I64": ("int64", 8, "int64"),
}
_BY_MLX = {mlx_name: st for st, (_, _, mlx_name) in _DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # safetensors spelling: BF16, F32, U32, ...
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = _DTYPES[self.dtype][1]
        for d in self.shape:
            n *= d
        return n


def dtype_name(dtype: mx.Dtype) -> str:
    """The safetensors spelling of an mlx dtype (`mx.bfloat16` -> `BF16`)."""
    return _BY_MLX[str(dtype).removeprefix("mlx.core.")]


class TensorFileWriter:
    """Write a safetensors file whose tensors are known up front and arrive one by one.

    The header is written first from the specs; `write` then checks each array against
    its spec and appends its bytes, hashing as it goes. `close()` returns the sha256.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        specs: Sequence[TensorSpec],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self._specs = list(specs)
        self._next = 0
        header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
        offset = 0
        for spec in self._specs:
            header[spec.name] = {
                "dtype": spec.dtype,
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offset += spec.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-(8 + len(raw)) % _ALIGN)
        self._sha = hashlib.sha256()
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._emit(struct.pack("<Q", len(raw)) + raw)
        self.size = 8 + len(raw) + offset

    def _emit(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._sha.update(data)

    def write(self, name: str, array: mx.array) -> None:
        import mlx.core as mx
        import numpy as np

        spec = self._specs[self._next]
        if name != spec.name:
            raise ValueError(f"expected tensor {spec.name!r} next, got {name!r}")
        if dtype_name(array.dtype) != spec.dtype or tuple(array.shape) != spec.shape:
            raise ValueError(
                f"{name}: expected {spec.dtype}{list(spec.shape)}, "
                f"got {dtype_name(array.dtype)}{list(array.shape)}"
            )
        carrier = _DTYPES[spec.dtype][0]
        if carrier != str(array.dtype).removeprefix("mlx.core."):
            array = array.view(getattr(mx, carrier))
        data = np.ascontiguousarray(np.asarray(array))
        self._emit(memoryview(data).cast("B"))
        self._next += 1

    def close(self) -> str:
        """Flush to disk and return the file's sha256; all tensors must have been written."""
        if self._next != len(self._specs):
            missing = self._specs[self._next].name
            self._file.close()
            raise ValueError(f"{self.path}: tensor {missing!r} was never written")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._sha.hexdigest()

    def abort(self) -> None:
        self._file.close()

    def __enter__(self) -> TensorFileWriter:
        return self

    def __exit__(self, exc_type, *_exc: object) -> None:
        if exc_type is not None:
            self.abort()
