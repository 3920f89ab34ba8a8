"""The runtime's caches are bounded: output buffers and CUDA graphs are least-recently-used caches
keyed by what they depend on, and `Pipeline.clear_caches()` drops them."""

import pytest
import torch

from migm.engines.build import BuildSettings, build_bundle
from migm.runtime import Pipeline
from migm.runtime.backends import BUFFER_SETS, _Buffers
from migm.runtime.graphs import GRAPHS, GraphedLoop
from migm.runtime.lru import LRU


def test_lru_evicts_the_least_recently_used():
    c = LRU(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # a is now the most recent: b goes first
    c.put("c", 3)
    assert list(c) == ["a", "c"] and c.get("b") is None and len(c) == 2


def test_lru_get_or_make_makes_once_and_refreshes():
    c, made = LRU(2), []
    make = lambda k: lambda: made.append(k) or k.upper()  # noqa: E731
    assert c.get_or_make("a", make("a")) == "A" and c.get_or_make("a", make("a")) == "A"
    c.get_or_make("b", make("b"))
    c.get_or_make("a", make("a"))  # a used again: b is the least recent
    c.get_or_make("c", make("c"))
    assert made == ["a", "b", "c"] and "a" in c and "b" not in c


def test_lru_clear_empties_it():
    c = LRU(3)
    for k in range(5):
        c.put(k, k)
    assert len(c) == 3 and list(c) == [2, 3, 4]
    c.clear()
    assert len(c) == 0 and c.get(4) is None
    with pytest.raises(ValueError):
        LRU(0)


@pytest.fixture(scope="module")
def bundle(tiny, tmp_path_factory):
    root = tiny[0]
    out = tmp_path_factory.mktemp("caches") / "tiny.plan"
    return build_bundle(out, BuildSettings(precision="fp32", backend="ort"), root / "base", root / "vq", root / "sc")


def test_buffers_are_keyed_by_output_shapes(bundle):
    """A shortcut run reveals a different number of tokens each step (the tiny schedule: 1, 2, 3, 3,
    4, 3): the shortcut's outputs keep their shape, so it uses one buffer set, not one per count."""
    pipe = Pipeline.from_bundle(bundle, backend="ort")
    pipe.generate_tokens([0, 1], steps=6, budget=2, strategy="shortcut", seed=0)
    assert len(pipe.backend.buffers) == 2  # base and shortcut
    pipe.decode(torch.zeros(2, 16, dtype=torch.long))
    assert len(pipe.backend.buffers) == 3  # and the decoder


def test_buffers_stay_bounded_and_clear_caches_empties_them(bundle):
    pipe = Pipeline.from_bundle(bundle, backend="ort")
    for n in range(1, 9):  # eight batch sizes x (base, shortcut, decoder): more sets than are kept
        pipe.generate(cond=torch.arange(n) % 3, steps=6, budget=3, seed=n, batch_size=n)
    assert len(pipe.backend.buffers) == BUFFER_SETS
    pipe.clear_caches()
    assert len(pipe.backend.buffers) == 0
    pipe.generate_tokens([0], steps=6, budget=3)  # made again on the next call
    assert len(pipe.backend.buffers) == 2


def test_evicted_buffers_give_the_same_tokens(bundle):
    """An evicted set is allocated again, and results already handed out stay valid: with room for a
    single set (the base and the shortcut evict each other at every step) the tokens do not change."""
    kw = dict(steps=6, budget=3, strategy="shortcut", seed=5, batch_size=2)
    want = Pipeline.from_bundle(bundle, backend="ort").generate_tokens([0, 1, 2], **kw)
    pipe = Pipeline.from_bundle(bundle, backend="ort")
    pipe.backend.buffers = _Buffers(pipe.device, size=1)
    assert torch.equal(pipe.generate_tokens([0, 1, 2], **kw), want)
    assert len(pipe.backend.buffers) == 1


def test_clear_caches_on_the_torch_backend(bundle):
    pipe = Pipeline.from_bundle(bundle, backend="torch")
    pipe.clear_caches()  # nothing kept per shape on a CPU: a no-op
    assert pipe.generate_tokens([0], steps=6).shape == (1, 16)


def test_graph_backends_run_the_loops_torch_ops_on_one_thread(bundle):
    """ORT's pool does the model calls: torch's threads are one while the loop and the decoder run
    (its spinning OpenMP workers would hold the cores), and as they were before and after."""
    pipe = Pipeline.from_bundle(bundle, backend="ort")
    seen, base, decode = [], pipe.backend.base, pipe.backend.decode
    pipe.backend.base = lambda *a: seen.append(("base", torch.get_num_threads())) or base(*a)
    pipe.backend.decode = lambda *a: seen.append(("decode", torch.get_num_threads())) or decode(*a)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pipe.generate([0, 1], steps=6, budget=3, seed=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and all(n == 1 for _, n in seen) and {w for w, _ in seen} == {"base", "decode"}
    assert Pipeline.from_bundle(bundle, backend="torch").backend.loop_threads is None  # torch keeps all its threads


class _FakeGraph:
    def replay(self):
        pass


def test_graphs_stay_bounded_and_keep_what_the_capture_reported(monkeypatch):
    """The CUDA graph cache's bookkeeping, with the capture replaced (no GPU here; the capture itself
    runs in the GPU tests): one capture per key, at most GRAPHS kept, the capture's report returned."""
    captured = []

    def capture(self, labels, loop, generator):
        out, info = loop(labels, generator)
        captured.append(info)
        return _FakeGraph(), labels.clone(), out, info

    monkeypatch.setattr(GraphedLoop, "_capture", capture)
    graphs = GraphedLoop(torch.device("cpu"))
    labels = torch.tensor([1, 2])
    for key in range(GRAPHS + 3):
        tokens, info = graphs(key, labels, lambda c, g, key=key: (c * 10, f"stats {key}"))
        assert torch.equal(tokens, labels * 10) and info == f"stats {key}"
    assert len(graphs) == GRAPHS and len(captured) == GRAPHS + 3
    _, info = graphs(GRAPHS + 2, labels, lambda c, g: pytest.fail("captured twice"))  # kept: replayed
    assert info == f"stats {GRAPHS + 2}"
    graphs.clear()
    assert len(graphs) == 0
