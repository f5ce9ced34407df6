"""The tokenizer fallback that needs transformers: a tokenizer without tokenizer.json.

`core.tokentext` reads every fast tokenizer (tokenizer.json) with the `tokenizers` library and
stays torch-free; an old sentencepiece-only repository needs transformers' AutoTokenizer, which
imports torch. Callers that may meet one pass `auto_detokenizer` as `tokentext.load`'s fallback.
transformers is imported only when a tokenizer really needs it.

What this module does not do: read weights, download (hub ids come from the local cache only).
"""

from __future__ import annotations

from specprof.core.records.tokentext import Detokenizer


def auto_detokenizer(spec: str, local_files_only: bool = False) -> Detokenizer | None:
    """transformers' AutoTokenizer for `spec` (tokenizer files only; it never reads weights); None if none."""
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
