"""The target's text side, shared by both engines without torch: its tokenizer, the prompts as token ids
(chat template applied), the ids that end a generation, batches and the context check.

The transformers engine (`engines/hf`) and `profile --engine vllm` encode a prompt here, so a report
holds the same prompt ids whichever engine ran it. A model directory with a tokenizer.json is read by
`FastTokenizer` (the `tokenizers` library, the chat template rendered with jinja2 as transformers
renders it): importing transformers would import torch wherever torch is installed. Anything else (a
hub id, a sentencepiece-only tokenizer, --trust-remote-code) goes to transformers' AutoTokenizer.

What this module does not do: read weights (`engines/hf/models`), import torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from specprof.core.records.corpus import Prompt
from specprof.core.records.tokentext import Detokenizer
from specprof.errors import SpecprofError


@dataclass
class Encoded:
    prompt: Prompt
    ids: list[int] = field(repr=False)
    response_ids: list[int] | None = field(default=None, repr=False)  # the logged response, tokenised


SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class FastTokenizer:
    """A model directory's tokenizer.json and chat template, read without transformers (and so without torch).

    Encodes as transformers' fast tokenizers do (`tokenizers` itself, the post-processor adding the special
    tokens), and renders the chat template as `apply_chat_template(tokenize=False)` does: a sandboxed jinja2
    environment with trim_blocks and lstrip_blocks, loop controls, transformers' `tojson`, `raise_exception`
    and `strftime_now`, the messages and the special tokens (tests/test_vllm_without_torch.py compares both
    with transformers' own output)."""

    def __init__(self, directory: Path):
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(str(directory / "tokenizer.json"))
        config = _read_json(directory / "tokenizer_config.json")
        template_file = directory / "chat_template.jinja"
        template = template_file.read_text(encoding="utf-8") if template_file.exists() else config.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            template = {t.get("name"): t.get("template") for t in template}.get("default")
        self.chat_template: str | None = template
        self.special = {name: _token_text(config[name]) for name in SPECIAL_TOKENS if config.get(name) is not None}

    @property
    def eos_token_id(self) -> int | None:
        token = self.special.get("eos_token")
        return self.backend.token_to_id(token) if token is not None else None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str:
        assert not tokenize and self.chat_template is not None
        return _compiled(self.chat_template).render(messages=messages, tools=None, documents=None,
                                                    add_generation_prompt=add_generation_prompt, **self.special)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _token_text(value: Any) -> str:
    return str(value.get("content")) if isinstance(value, dict) else str(value)


def _compiled(template: str) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:  # not jinja's own, which escapes HTML characters
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def load_tokenizer(source: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer at `source`: `FastTokenizer` for a directory with tokenizer.json, else transformers'."""
    directory = Path(source)
    if (directory / "tokenizer.json").is_file() and not trust_remote_code:
        return FastTokenizer(directory)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


def load_config(source: str, trust_remote_code: bool = False) -> dict:
    """A model's config.json as a dict (a directory's read directly; a hub id's through transformers)."""
    path = Path(source) / "config.json"
    if path.is_file():
        return _read_json(path)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code).to_dict()


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
    path = Path(source) / "generation_config.json"
    if Path(source).is_dir():
        return _read_json(path).get("eos_token_id")
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
