"""Temperature / top-p processing and seeded sampling, shared by `profiler` and `speculate`.

Both models' logits go through the same `probabilities` so that β = Σ min(p, q) compares
distributions processed identically (docs/design.md §1). Everything is computed in float32, whatever
dtype the models run in.

At temperature 0 the tool is greedy: the chosen token is the argmax of the raw logits (first index
on ties, as `torch.argmax` and transformers' greedy search), and the reported probabilities are the
plain softmax. Sampling draws one uniform number per row and step from a per-prompt generator and
inverts the cumulative distribution, so a prompt's sample does not depend on its batch or device.
"""

from __future__ import annotations

import hashlib

import torch


def probabilities(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """[..., V] logits → float32 probabilities after temperature and top-p (nucleus) processing.

    Top-p keeps the most likely tokens until their mass reaches `top_p` (the token that crosses
    it included), as transformers' TopPLogitsWarper does, then renormalises.
    """
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0 and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of [..., V] probabilities (0 · log 0 = 0)."""
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(dim=-1)


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A 63-bit seed for one prompt: stable across runs, batches and resumes."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generators(seed: int, prompt_ids: list[str]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(prompt_seed(seed, pid)) for pid in prompt_ids]


def sample(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of [B, V] `probs`, row i driven by `generators[i]` (inverse-CDF sampling)."""
    u = torch.stack([torch.rand((), generator=g) for g in generators]).to(probs.device)
    cdf = probs.cumsum(dim=-1)
    u = u * cdf[:, -1]  # the cdf's last value is 1 up to rounding
    token = torch.searchsorted(cdf, u[:, None], right=True).squeeze(-1)
    return token.clamp_max(probs.shape[-1] - 1)


def choose(logits: torch.Tensor, probs: torch.Tensor, temperature: float, generators: list[torch.Generator] | None):
    """The next token per row: greedy argmax at temperature 0, else a seeded sample from `probs`."""
    if temperature == 0:
        return logits.float().argmax(dim=-1)
    if generators is None:
        raise ValueError("sampling needs one generator per row")
    return sample(probs, generators)
