"""A model's top-2 logit margin at every continuation position, teacher-forced in float32 on the CPU.

`verify --engine vllm` calls this only to explain a prompt whose vLLM counters differ from the
prediction while the continuation is identical: where the draft's two best tokens are nearly tied,
another kernel (vLLM's CPU attention, another batch shape) may propose the other one. Nothing else.
"""

from __future__ import annotations

import torch

from specprof.engines.hf import models


@torch.inference_mode()
def top2_margins(source: str, prompt: list[int], continuation: list[int]) -> list[float]:
    """[len(continuation)]: top-1 minus top-2 logit of the model at `source` before each continuation token."""
    if not continuation:
        return []
    loaded = models.load_model(source, torch.device("cpu"), torch.float32, role="--draft-model-dir")
    ids = torch.tensor([list(prompt) + list(continuation)])
    logits = loaded.model(input_ids=ids, use_cache=False, logits_to_keep=len(continuation) + 1).logits[0, :-1]
    top2 = logits.float().topk(2, dim=-1).values  # [len(continuation), 2]
    return (top2[:, 0] - top2[:, 1]).tolist()
