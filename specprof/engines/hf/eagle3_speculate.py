"""A real EAGLE-3 speculative loop for `speculate`: the head drafts from the target's own captured states.

`HeadProposer` hooks the target's captured layers (as `eagle3_profile.capture_aux` does) for the
whole generation: the prefill and every verification leave their states here, and after each
verification `rollback` keeps those of the accepted positions and the pending one. `propose` first
adds one head row per newly verified position j (token z_{j+1}, fc of the target's states at j,
position j) to the head's own KV cache, as vLLM's first drafting pass does, then drafts depth 1 from
the last row and depths 2..k from its own state; the depth rows' KV is dropped after the block
(vLLM overwrites it with the next verification's rows). Greedy only: heads are profiled at T = 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specprof.engines.hf.eagle3 import HeadDraft
from specprof.errors import SpecprofError


class HeadProposer:
    def __init__(self, draft: HeadDraft):
        self.draft = draft
        self.head = draft.head
        self.handles: list = []
        self.states: dict[int, list[torch.Tensor]] = {}

    def start(self, prompt: Sequence[int]) -> None:
        """Hook the target before its prefill (`speculate` calls this first) and forget any earlier run."""
        self.stop()
        model = self.draft.target
        self.states = {i: [] for i in self.head.aux_layers}
        for i in self.head.aux_layers:
            module = model.model.embed_tokens if i == 0 else model.model.layers[i - 1]
            self.handles.append(module.register_forward_hook(self._keep(i)))
        self.pending: list[torch.Tensor] = []  # [n, n_aux·H] target states of positions with no head row yet
        self.last: torch.Tensor | None = None  # the latest forward's states, until rollback says how many count
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.rows = 0  # head rows in the cache: positions 0..rows − 1

    def _keep(self, i: int):
        def keep(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            self.states[i].append(hidden[0])
            if all(self.states[j] for j in self.head.aux_layers):
                self.last = torch.cat([self.states[j].pop() for j in self.head.aux_layers], dim=-1)

        return keep

    def stop(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def propose(self, context: list[int], k: int, temperature: float, top_p: float,
                generator: torch.Generator | None, confidence_threshold: float | None = None) -> tuple[list[int], None]:
        if temperature > 0:
            raise SpecprofError("EAGLE-3 heads are verified at temperature 0 only")
        head = self.head
        if self.last is not None:  # the prefill's states: every one of them counts
            self.pending.append(self.last)
            self.last = None
        states = torch.cat(self.pending) if self.pending else None
        self.pending = []
        if states is not None and len(states):
            n = len(states)
            device = states.device
            tokens = torch.tensor(context[self.rows + 1: self.rows + 1 + n], device=device)
            out, state, new = head.rows(tokens, head.combine(states), torch.arange(self.rows, self.rows + n,
                                                                                    device=device), cache=self.cache)
            self.cache = new if self.cache is None else [(torch.cat([c[0], kv[0]]), torch.cat([c[1], kv[1]]))
                                                         for c, kv in zip(self.cache, new, strict=True)]
            self.rows += n
            self.out, self.state = out[-1:], state[-1:]
        if self.cache is None:  # a one-token prompt: nothing to draft from yet
            return [], None
        proposals = [int(head.greedy(self.out)[0])]
        hidden, cache = self.state, self.cache
        for depth in range(1, k):
            device = hidden.device
            out, hidden, new = head.rows(torch.tensor(proposals[-1:], device=device), hidden,
                                         torch.tensor([self.rows - 1 + depth], device=device), cache=cache)
            cache = [(torch.cat([c[0], kv[0]]), torch.cat([c[1], kv[1]])) for c, kv in zip(cache, new, strict=True)]
            proposals.append(int(head.greedy(out)[0]))
        return proposals, None

    def rollback(self, valid: int) -> None:
        """The target verified up to `valid` tokens: keep the states of its positions below `valid` not yet rows."""
        if self.last is not None:
            keep = valid - (self.rows + sum(len(p) for p in self.pending))
            self.pending.append(self.last[: max(keep, 0)])
            self.last = None
