"""The target's text side, shared by both engines without torch: its tokenizer, the prompts as token ids
(chat template applied), the ids that end a generation, batches and the context check.

The transformers engine (`engines/hf`) and `profile --engine vllm` encode a prompt here, so a report
holds the same prompt ids whichever engine ran it. transformers' tokenizer classes read tokenizer and
config files only; they run without torch (tests/test_vllm_without_torch.py runs both vLLM commands
with torch hidden).

What this module does not do: read weights (`engines/hf/models`), import torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from specprof.core.records.corpus import Prompt
from specprof.core.records.tokentext import Detokenizer
from specprof.errors import SpecprofError


@dataclass
class Encoded:
    prompt: Prompt
    ids: list[int] = field(repr=False)
    response_ids: list[int] | None = field(default=None, repr=False)  # the logged response, tokenised


def has_chat_template(tokenizer: object) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(tokenizer: Any, prompt: Prompt, chat_template: bool) -> list[int]:
    """Token ids the target sees: the model's own chat template when it has one (and it is wanted)."""
    if chat_template and has_chat_template(tokenizer):
        messages = (
            [{"role": m.role, "content": m.content} for m in prompt.messages]
            if prompt.messages is not None
            else [{"role": "user", "content": prompt.prompt}]
        )
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if prompt.messages is not None:
        raise SpecprofError(
            f"{prompt.source}: chat messages need a chat template, and "
            + ("--no-chat-template was given" if not chat_template else "the tokenizer has none")
        )
    return list(tokenizer(prompt.prompt)["input_ids"])


def eos_ids(generation_eos: int | Sequence[int] | None, tokenizer: object) -> list[int]:
    """Token ids that end a generation, as `generate` uses them: the generation config's and the tokenizer's."""
    ids: set[int] = set()
    for value in (generation_eos, getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


def generation_eos(source: str) -> int | list[int] | None:
    """The eos_token_id of a model directory's (or cached hub id's) generation_config.json, None without one."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(source).eos_token_id
    except (OSError, ValueError):
        return None


def auto_detokenizer(spec: str, local_files_only: bool = False) -> Detokenizer | None:
    """transformers' AutoTokenizer for `spec` (tokenizer files only; it never reads weights); None if none.

    `core.tokentext` reads every fast tokenizer (tokenizer.json) itself; callers that may meet an old
    sentencepiece-only repository pass this as `tokentext.load`'s fallback."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=local_files_only)
    except (OSError, ValueError):
        return None
    return Detokenizer(
        spec,
        lambda batch: [tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
                       for ids in batch],
    )


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
