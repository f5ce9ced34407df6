"""Engines: everything that runs a model.

`engines.hf` runs transformers models in this process (loading, drafts, generation, sampling, timing,
the speculative loop, distillation). A second engine (a vLLM server over HTTP) sits beside it as its
own sub-package and hands the core the same records. Engines may import the core, never the
commands or the UI. See docs/design.md, "Layers".
"""
