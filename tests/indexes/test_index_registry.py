"""indexes.registry: the kinds of index, their constructors, and what reads the registry
(new_index, the store's KINDS, the CLI's build --kind)."""

from __future__ import annotations

import faiss
import pytest
from click.testing import CliRunner

from dahash_index.indexes import ShardedIndex, get_kind, list_kinds, new_index, register_kind
from dahash_index.indexes.binary import as_ivf
from dahash_index.indexes.registry import KINDS


def test_the_kinds():
    assert list_kinds() == ["flat", "ivf", "sharded"]
    assert list_kinds(storable=True) == ["flat", "ivf"]
    assert list_kinds(storable=False) == ["sharded"]
    ivf = get_kind("ivf")
    assert ivf.needs_training and ivf.takes_nlist and ivf.storable and ivf.description
    flat = get_kind("flat")
    assert not flat.needs_training and not flat.takes_nlist


def test_new_index_dispatches_through_the_registry():
    assert isinstance(new_index(16), faiss.IndexBinaryIDMap)
    assert as_ivf(new_index(16, "ivf", 3)).nlist == 3
    assert isinstance(new_index(16, "sharded"), ShardedIndex)


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(ValueError, match="kind must be one of flat, ivf, sharded, got 'hnsw'"):
        get_kind("hnsw")
    with pytest.raises(ValueError, match="index kind must be one of"):
        new_index(16, "hnsw")
    with pytest.raises(ValueError, match="nlist applies only to kind='ivf', not 'sharded'"):
        new_index(16, "sharded", 4)


def test_register_a_kind_and_refuse_a_second_registration():
    try:
        @register_kind("plainflat", "a bare IndexBinaryFlat (test)")
        def _new(bits, nlist):
            return faiss.IndexBinaryFlat(bits)

        assert "plainflat" in list_kinds() and "plainflat" not in list_kinds(storable=True)
        assert isinstance(new_index(8, "plainflat"), faiss.IndexBinaryFlat)
        with pytest.raises(ValueError, match="registered already"):
            register_kind("plainflat", "again")(_new)
    finally:
        KINDS.discard("plainflat")
    with pytest.raises(ValueError, match="lower-case identifier"):
        register_kind("Not A Name", "x")


def test_store_kinds_and_cli_choice_come_from_the_registry():
    from dahash_index.cli.main import main
    from dahash_index.store import KINDS

    assert KINDS == ("flat", "ivf")
    result = CliRunner().invoke(main, ["build", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "[flat|ivf]" in text
    for kind in KINDS:
        assert " ".join(get_kind(kind).description.split()) in text
