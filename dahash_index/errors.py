"""One-line errors and the argument checks every layer shares: one message for each."""

from __future__ import annotations

import numpy as np


def one_line(err: BaseException) -> str:
    """An exception's message on one line (its type name when the message is empty)."""
    return " ".join(str(err).split()) or type(err).__name__


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer (Python or numpy), a bool not counting as one."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int if it is an integer (not a bool) >= minimum, else ValueError."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_bits(bits: object) -> int:
    """The code length K as an int if it is a positive multiple of 8, else ValueError."""
    if not is_int(bits) or bits <= 0 or bits % 8:
        raise ValueError(f"K must be a positive multiple of 8 (FAISS codes are bytes), got {bits}")
    return int(bits)
