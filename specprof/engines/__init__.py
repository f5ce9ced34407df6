"""Engines: everything that runs a model.

`engines.hf` runs transformers models in this process (loading, drafts, generation, sampling, timing,
the speculative loop, distillation). A second engine (`engines.vllm`, servers over HTTP) sits beside it
as its own sub-package and hands the core the same records; it never imports `engines.hf`. What both
need without torch is here: `text` (the tokenizer, prompts as token ids, EOS ids, batches) and
`modelfiles` (the embedded default target and the GGUF conversion cache). Engines may import the core, never the
commands or the UI. See docs/design.md, "Layers".
"""
