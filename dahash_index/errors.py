"""One-line errors and the argument checks every layer shares: one message for each."""

from __future__ import annotations

import numpy as np


def one_line(err: BaseException) -> str:
    """An exception's message on one line (its type name when the message is empty), with
    what cannot be printed escaped (``printable``)."""
    return printable(" ".join(str(err).split())) or type(err).__name__


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


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8: a file name that was not (read by Python with
    surrogate escapes) does not, and cannot go into the index's tables as it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` with control characters (a newline in a file name, say) and undecodable bytes
    escaped, so that it stays on one line of output: ``\\n``, ``\\xNN``."""
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogate escape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in "\n\r\t":
            out.append(repr(ch)[1:-1])
        elif code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code < 0xE000:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)
