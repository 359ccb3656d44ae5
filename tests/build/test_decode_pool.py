"""Unit tests of the indexer's plumbing: the reader thread and the default decode workers."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from dahash_index.build.decode_pool import default_workers, prefetch


def test_prefetch_keeps_order_and_reads_ahead():
    read: list[int] = []

    def items():
        for i in range(10):
            read.append(i)
            yield i

    got = prefetch(items(), depth=3)
    assert next(got) == 0
    # Bounded: 1 consumed + 3 queued + 1 read and waiting for room, and no further.
    deadline = time.monotonic() + 5
    while len(read) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert len(read) == 5
    assert [0, *got] == list(range(10))


def test_prefetch_raises_the_readers_error_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise OSError("shard s3://b/x.tar: connection reset")

    got = []
    with pytest.raises(OSError, match="connection reset"):
        for item in prefetch(items(), depth=4):
            got.append(item)
    assert got == [1, 2]


def test_prefetch_releases_its_thread_when_the_consumer_stops():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    before = threading.active_count()
    got = prefetch(endless(), depth=2)
    assert [next(got) for _ in range(3)] == [0, 1, 2]
    got.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() == before


def test_default_workers_decode_in_line_on_the_cpu():
    assert default_workers(torch.device("cpu")) == 0
    assert 1 <= default_workers(torch.device("cuda")) <= 8
