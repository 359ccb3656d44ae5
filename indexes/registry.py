"""The registry of index kinds: one name, one description and one constructor each.

Modelled on torchvision's ``models/_api.py``: a constructor registers itself with a decorator,

    @register_kind("flat", "exhaustive search, exact", storable=True)
    def _new_flat(bits: int, nlist: int | None) -> faiss.IndexBinary: ...

and everything that offers a choice of kinds (``new_index``, the index store's ``KINDS``, the
CLI's ``build --kind``) asks the registry instead of keeping its own list. The kinds of this
package register themselves when ``indexes`` is imported (``indexes.binary``: flat, ivf;
``indexes.sharded``: sharded); this module imports nothing from the package, so that those
modules can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# new(bits, nlist) -> an empty index: a faiss.IndexBinary, or an indexes.sharded.ShardedIndex
Constructor = Callable[[int, "int | None"], Any]


@dataclass(frozen=True)
class IndexKind:
    """One kind of index.

    name: what users type (``--kind``). description: one line for help texts.
    new: ``new(bits, nlist)`` makes an empty index for K-bit codes (bits already checked).
    needs_training: codes can be added only after training (``indexes.train_ivf``).
    takes_nlist: ``new`` needs an nlist (and any other kind refuses one).
    storable: an index store (``dahash_index.store``) can be built as this kind.
    """

    name: str
    description: str
    new: Constructor
    needs_training: bool = False
    takes_nlist: bool = False
    storable: bool = False


_KINDS: dict[str, IndexKind] = {}


def register_kind(
    name: str,
    description: str,
    *,
    needs_training: bool = False,
    takes_nlist: bool = False,
    storable: bool = False,
) -> Callable[[Constructor], Constructor]:
    """Decorator: register the decorated ``new(bits, nlist)`` as kind ``name``; returns it as is.

    A name registered twice is refused (ValueError): two modules would otherwise silently
    fight over what ``--kind NAME`` builds.
    """
    if not name or not name.isidentifier() or name != name.lower():
        raise ValueError(f"a kind name must be a lower-case identifier, got {name!r}")

    def register(new: Constructor) -> Constructor:
        if name in _KINDS:
            raise ValueError(f"index kind {name!r} is registered already")
        _KINDS[name] = IndexKind(name, description, new, needs_training, takes_nlist, storable)
        return new

    return register


def get_kind(name: str) -> IndexKind:
    """The kind registered as ``name``; ValueError naming the known kinds otherwise."""
    try:
        return _KINDS[name]
    except (KeyError, TypeError):
        known = ", ".join(repr(k) for k in _KINDS)
        raise ValueError(f"unknown index kind {name!r}; the kinds are {known}") from None


def list_kinds(storable: bool | None = None) -> list[str]:
    """Names of the registered kinds in registration order; ``storable=True`` keeps only those
    an index store can be built as (False: only the others)."""
    return [k.name for k in _KINDS.values() if storable is None or k.storable == storable]
