"""Whole-loop CUDA graphs: the N-step generation captured once per shape and replayed.

A plan fixes everything the loop does (which steps run the base model, how many tokens each
step reveals, every tensor shape), so the whole loop, sampling kernel included, is one
static sequence of kernels. It is captured once per key (batch, N, B, strategy, sampling
settings) into a CUDA graph and replayed: no kernel launches from Python and no host
synchronisation inside the loop. The loop's buffers (features, tokens, masks, logits) are
the graph's private memory pool, allocated at capture and reused by every replay. The graphs
are a least-recently-used cache of GRAPHS entries (runtime/lru.py); `clear()` drops them.

Randomness comes from one CUDA generator registered with every graph: seeding it and
replaying consumes the same Philox stream, in the same order, as the eager loop does, so
a seed gives the same tokens with and without graphs. With one seed per row, row r of every
chunk draws from the r-th of a fixed list of row generators (the same objects at capture and
at every replay), each seeded with its row's seed before the replay.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Sequence

import torch

from .lru import LRU

# (labels, generator or one generator per row) -> (tokens, what the run reports: kept from the capture)
LoopFn = Callable[[torch.Tensor, "torch.Generator | list[torch.Generator]"], "tuple[torch.Tensor, Any]"]

# Graphs kept. Each holds a private memory pool with a whole loop's buffers (features and logits
# of every row: gigabytes for an 8B model), so few: four cover migm-serve's padded batch sizes
# 1, 2, 4 and 8 at one setting, or a job's full and last chunks. Another key evicts the least
# recently used graph, which is captured again (one eager loop and a capture) if it comes back.
GRAPHS = 4


class GraphedLoop:
    def __init__(self, device: torch.device, size: int = GRAPHS):
        self.device = device
        self.generator = torch.Generator(device=device)
        self.row_generators: list[torch.Generator] = []
        self._graphs: LRU[tuple] = LRU(size)

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def seed_rows(self, seeds: Sequence[int]) -> list[torch.Generator]:
        """One seeded generator per row of a chunk: always the first len(seeds) row generators."""
        while len(self.row_generators) < len(seeds):
            self.row_generators.append(torch.Generator(device=self.device))
        gens = self.row_generators[:len(seeds)]
        for g, s in zip(gens, seeds):
            g.manual_seed(s)
        return gens

    def __call__(self, key: Hashable, labels: torch.Tensor, loop: LoopFn,
                 row_generators: list[torch.Generator] | None = None) -> tuple[torch.Tensor, Any]:
        """(tokens for `labels`, what `loop` reported at the capture) from the graph for `key`, captured
        from `loop` on first use. The key holds everything the graph depends on (the labels' shape,
        the sampler settings, ...); `row_generators` (from `seed_rows`): per-row randomness, which the
        key must say too."""
        entry = self._graphs.get_or_make(key, lambda: self._capture(labels, loop, row_generators or self.generator))
        graph, static_labels, out, info = entry
        static_labels.copy_(labels)
        graph.replay()
        return out.clone(), info

    def _capture(self, labels: torch.Tensor, loop: LoopFn, generator):
        gens = generator if isinstance(generator, list) else [generator]
        states = [g.get_state() for g in gens]
        static_labels = labels.clone()
        # warm-up outside the graph (cuBLAS handles, autotuning, lazy inits) on a side stream
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            loop(static_labels, generator)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        for g in gens:
            graph.register_generator_state(g)
        with torch.cuda.graph(graph):
            out, info = loop(static_labels, generator)
        # capture and warm-up consumed no numbers the caller sees: rewind to where we were
        for g, state in zip(gens, states):
            g.set_state(state)
        return graph, static_labels, out, info

    def clear(self) -> None:
        """Drop every graph and its memory pool (replays hand out copies, so none is still referred to)."""
        self._graphs.clear()

    def __len__(self) -> int:
        return len(self._graphs)
