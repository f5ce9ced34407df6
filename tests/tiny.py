"""Tiny random-init models and a character-level tokenizer, built in the tests (never downloaded).

The tokenizer maps each printable ASCII character to one id (102 ids with the special tokens),
so continuations are short strings and distributions are small enough to enumerate. Models follow
transformers' own causal_lm_tester sizes: hidden 32, 2 layers.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

SPECIALS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
CHARS = [c for c in string.printable if c not in "\x0b\x0c\r"]  # 97 characters; 102 ids with the specials
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def make_tokenizer(directory: Path, chat_template: bool = True):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("<\\|user\\|>|<\\|assistant\\|>|."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="</s>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(directory)
    return tok


def vocab_size() -> int:
    return len(SPECIALS) + len(CHARS)


def make_model(directory: Path, seed: int, layers: int = 2, hidden: int = 32, eos_token_id: int = 2,
               noise_from: Path | None = None, noise: float = 0.0, chat_template: bool = True) -> Path:
    """A random LlamaForCausalLM saved with its tokenizer; `noise_from` perturbs another tiny model instead."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # weights are random: seed them so every test run sees the same model
    if noise_from is not None:
        model = AutoModelForCausalLM.from_pretrained(noise_from, dtype=torch.float32)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * p.std() * torch.randn_like(p))
    else:
        config = LlamaConfig(
            vocab_size=vocab_size(), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            bos_token_id=1, eos_token_id=eos_token_id, pad_token_id=eos_token_id, tie_word_embeddings=False,
            initializer_range=0.3,  # large weights: peaked distributions, like a trained model's
        )
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = eos_token_id
    # pad = EOS, as in SmolLM2. With a separate pad id that a random model may emit mid-sequence,
    # transformers' generate infers a mask from pad ids and the draft in assisted generation sees less.
    model.generation_config.pad_token_id = eos_token_id
    model.save_pretrained(directory)
    make_tokenizer(directory, chat_template)
    return directory
