"""The shared query encoder: concurrent callers are embedded together, each gets its own vectors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipelines.step_retrieval import SharedEncoder


class FakeEmbedder:
    """Vectors that name their text; the first call blocks until released, so others queue meanwhile."""

    def __init__(self, fail: bool = False):
        self.calls: list[list[str]] = []
        self.inside, self.release = threading.Event(), threading.Event()
        self.fail = fail

    def encode(self, texts, batch_size=64):
        self.calls.append(list(texts))
        self.inside.set()
        assert self.release.wait(10)
        if self.fail:
            raise RuntimeError("model gone")
        return np.array([[float(t.split("-")[1]), len(t)] for t in texts], dtype=np.float32)


def _concurrent(encoder, embedder, n):
    results: dict[int, object] = {}

    def call(i):
        try:
            results[i] = encoder.encode(embedder, [f"t-{i}", f"t-{i}{i}"])
        except Exception as e:  # noqa: BLE001 - the test looks at what each caller got
            results[i] = e

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert embedder.inside.wait(10)
    others = [threading.Thread(target=call, args=(i,)) for i in range(1, n)]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    while len(encoder._queue) < n - 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    embedder.release.set()
    for t in [first, *others]:
        t.join(10)
    return results


def test_callers_that_arrive_during_an_encode_share_the_next_one():
    encoder, embedder = SharedEncoder(), FakeEmbedder()
    results = _concurrent(encoder, embedder, 8)
    assert len(embedder.calls) == 2 and embedder.calls[0] == ["t-0", "t-00"] and len(embedder.calls[1]) == 14
    for i in range(8):
        assert results[i].tolist() == [[float(i), 2 + len(str(i))], [float(f"{i}{i}"), 2 + 2 * len(str(i))]]
    assert not encoder._running and not encoder._queue


def test_a_failed_encode_reaches_every_caller_it_was_for_and_the_encoder_recovers():
    encoder, embedder = SharedEncoder(), FakeEmbedder(fail=True)
    results = _concurrent(encoder, embedder, 4)
    assert all(isinstance(r, RuntimeError) for r in results.values()) and len(results) == 4
    embedder.fail = False
    assert encoder.encode(embedder, ["t-5"]).tolist() == [[5.0, 3.0]]


def test_a_lone_caller_encodes_at_once():
    encoder, embedder = SharedEncoder(), FakeEmbedder()
    embedder.release.set()
    assert encoder.encode(embedder, ["t-1"]).tolist() == [[1.0, 3.0]] and embedder.calls == [["t-1"]]


@pytest.mark.parametrize("n", [2, 16])
def test_every_caller_returns_under_load(n):
    encoder, embedder = SharedEncoder(), FakeEmbedder()
    embedder.release.set()
    out: list = [None] * n
    threads = [
        threading.Thread(target=lambda i=i: out.__setitem__(i, encoder.encode(embedder, [f"t-{i}"])))
        for i in range(n)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert [o.tolist() for o in out] == [[[float(i), 2 + len(str(i))]] for i in range(n)]
