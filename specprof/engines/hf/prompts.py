"""Prompts as the transformers engine's models see them (`engines/text` encodes them, torch-free).

Shared by `profile` (`profiler`), the teacher-forced pass over logged responses (`teacher`) and `distill`.
"""

from __future__ import annotations

from collections.abc import Sequence

from specprof.core.records.corpus import Prompt
from specprof.engines.hf.drafts import BlockDraft, Draft, NgramDraft
from specprof.engines.hf.models import LoadedModel
from specprof.engines.text import Encoded, encode_prompt


def encode_all(prompts: Sequence[Prompt], target: LoadedModel, chat_template: bool) -> list[Encoded]:
    return [Encoded(p, encode_prompt(target.tokenizer, p, chat_template)) for p in prompts]


def context_limit_of(draft: Draft) -> int | None:
    if isinstance(draft, NgramDraft | BlockDraft) or not hasattr(draft, "model"):
        return None  # model-free, or a head reading the target's states (the target's context bounds it)
    return getattr(draft.model.config.get_text_config(), "max_position_embeddings", None)
