"""The registry of index kinds: one name, one description and one constructor each.

A constructor registers itself with a decorator (``dahash_index.registry`` underneath),

    @register_kind("flat", "exhaustive search, exact", storable=True)
    def _new_flat(bits: int, nlist: int | None) -> faiss.IndexBinary: ...

and everything that offers a choice of kinds (``new_index``, the index store's ``KINDS``, the
CLI's ``build --kind``) asks the registry instead of keeping its own list. The kinds of this
package register themselves when ``indexes`` is imported (``indexes.binary``: flat, ivf;
``indexes.sharded``: sharded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dahash_index.registry import Registry

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


KINDS: Registry[IndexKind] = Registry("index kind")


def register_kind(
    name: str,
    description: str,
    *,
    needs_training: bool = False,
    takes_nlist: bool = False,
    storable: bool = False,
) -> Callable[[Constructor], Constructor]:
    """Decorator: register the decorated ``new(bits, nlist)`` as kind ``name``; returns it as is.
    A name registered twice is refused (ValueError)."""
    if not name or not name.isidentifier() or name != name.lower():
        raise ValueError(f"a kind name must be a lower-case identifier, got {name!r}")

    def register(new: Constructor) -> Constructor:
        KINDS.add(name, IndexKind(name, description, new, needs_training, takes_nlist, storable),
                  description, storable=storable)
        return new

    return register


def get_kind(name: str) -> IndexKind:
    """The kind registered as ``name``; ValueError naming the known kinds otherwise."""
    return KINDS.get(name)


def list_kinds(storable: bool | None = None) -> list[str]:
    """Names of the registered kinds in registration order; ``storable=True`` keeps only those
    an index store can be built as (False: only the others)."""
    return KINDS.names() if storable is None else KINDS.names(storable=storable)
