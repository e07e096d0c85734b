"""The background threads of the streamed merge and extraction: order kept, memory bounded, errors surfaced on
the caller's thread, and no thread left behind when either side stops early."""

from __future__ import annotations

import threading
import time

import pytest

from graft.io.pipeline import BackgroundWriter, prefetch


def test_prefetch_yields_in_order_and_reads_at_most_depth_ahead() -> None:
    produced: list[int] = []

    def items():
        for i in range(20):
            produced.append(i)
            yield i

    seen = []
    for item in prefetch(items(), depth=2):
        time.sleep(0.005)
        assert len(produced) - len(seen) <= 2 + 2  # the queue's depth, one in hand, one being made
        seen.append(item)
    assert seen == list(range(20))


def test_prefetch_surfaces_the_producers_error_after_what_it_made() -> None:
    def items():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetch(items()):
            got.append(item)
    assert got == [1, 2]


def test_prefetch_stops_its_thread_when_the_consumer_leaves_early() -> None:
    before = threading.active_count()
    stream = prefetch(iter(range(1000)), depth=2)
    assert next(stream) == 0
    stream.close()  # the consumer breaks out: the producer must not stay blocked on a full queue
    assert threading.active_count() == before


def test_background_writer_runs_jobs_in_order_and_reraises_the_first_error() -> None:
    done: list[int] = []
    writer = BackgroundWriter(depth=2)
    for i in range(10):
        writer.submit(done.append, i)
    writer.close()
    assert done == list(range(10))

    def fail(msg: str) -> None:
        raise OSError(msg)

    writer = BackgroundWriter(depth=2)
    writer.submit(fail, "first")
    writer.submit(fail, "second")  # skipped: the writer stops working after its first error
    with pytest.raises(OSError, match="first"):
        writer.close()


def test_background_writer_abort_drops_what_is_queued() -> None:
    gate, done = threading.Event(), []
    writer = BackgroundWriter(depth=4)
    writer.submit(gate.wait)  # the thread is busy with this job...
    for i in range(3):
        writer.submit(done.append, i)  # ...while these wait in the queue
    threading.Timer(0.2, gate.set).start()  # the busy job ends only after abort() has dropped the queue
    writer.abort()
    assert done == [] and not writer._thread.is_alive()
