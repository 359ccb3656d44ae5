"""Arrow arrays built from their buffers, without ``pa.array``: ``pa.array`` (and
``pa.scalar``, ``Table.from_pylist``) first imports pandas to look for pandas types, which costs
a new process 0.3-0.5 s on the 2-core machine, more than the rest of a query's search and
metadata. The query path uses these instead (a test checks that it imports no pandas)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

INT64 = pa.int64()
_NUMPY = {pa.int32(): np.int32, INT64: np.int64, pa.float32(): np.float32}


def numeric_array(values: np.ndarray, type: pa.DataType = INT64,
              null: np.ndarray | None = None) -> pa.Array:
    """values (n,) as an Arrow ``type`` (int32, int64 or float32) array, null where ``null``
    (bool (n,)) is True; built on a copy of ``values``' buffer."""
    data = np.ascontiguousarray(values, dtype=_NUMPY[type])
    validity = None
    if null is not None and null.any():
        validity = pa.py_buffer(np.packbits(~np.asarray(null, bool), bitorder="little"))
    return pa.Array.from_buffers(type, len(data), [validity, pa.py_buffer(data.copy())])


def string_array(values: list[str | None]) -> pa.Array:
    """values as an Arrow string array (None -> null), built from its buffers."""
    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    null = np.array([v is None for v in values], dtype=bool)
    validity = pa.py_buffer(np.packbits(~null, bitorder="little")) if null.any() else None
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])
