"""Prompts as the target sees them: token ids (chat template applied), batches, and the context check.

Shared by `profile` (`profiler`), the teacher-forced pass over logged responses (`teacher`),
`distill` and `profile --engine vllm`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from specprof.core.records.corpus import Prompt
from specprof.engines.hf.drafts import BlockDraft, Draft, NgramDraft
from specprof.engines.hf.models import LoadedModel, encode_prompt
from specprof.errors import SpecprofError


@dataclass
class Encoded:
    prompt: Prompt
    ids: list[int] = field(repr=False)
    response_ids: list[int] | None = field(default=None, repr=False)  # the logged response, tokenised


def encode_all(prompts: Sequence[Prompt], target: LoadedModel, chat_template: bool) -> list[Encoded]:
    return [Encoded(p, encode_prompt(target.tokenizer, p, chat_template)) for p in prompts]


def make_batches(encoded: Sequence[Encoded], batch_size: int) -> list[list[Encoded]]:
    """Batches of at most `batch_size` prompts, sorted by length (longest first) and of equal size,
    so no small straggler batch runs at low efficiency. Fixed for a corpus, so a resumed run batches alike."""
    order = sorted(encoded, key=lambda e: (-len(e.ids), e.prompt.id))
    n_batches = max(1, -(-len(order) // batch_size))
    size = -(-len(order) // n_batches)
    return [order[i : i + size] for i in range(0, len(order), size)]


def drop_too_long(
    encoded: Sequence[Encoded], limits: Sequence[int | None], max_new_tokens: int, too_long: str
) -> tuple[list[Encoded], list[str]]:
    """Prompts whose tokens plus `max_new_tokens` fit every model's context; the others' ids.

    `too_long="error"` raises for the first prompt that does not fit instead of skipping it.
    """
    known = [n for n in limits if n]
    if not known:
        return list(encoded), []
    context = min(known)
    kept, skipped = [], []
    for e in encoded:
        if len(e.ids) + max_new_tokens <= context:
            kept.append(e)
        elif too_long == "error":
            raise SpecprofError(
                f"{e.prompt.source}: prompt {e.prompt.id!r} has {len(e.ids)} tokens; with --max-new-tokens "
                f"{max_new_tokens} it exceeds the model context of {context} (--too-long skip to skip it)"
            )
        else:
            skipped.append(e.prompt.id)
    if not kept:
        raise SpecprofError(f"every prompt is longer than the model context of {context} tokens")
    return kept, skipped


def context_limit_of(draft: Draft) -> int | None:
    if isinstance(draft, NgramDraft | BlockDraft) or not hasattr(draft, "model"):
        return None  # model-free, or a head reading the target's states (the target's context bounds it)
    return getattr(draft.model.config.get_text_config(), "max_position_embeddings", None)
