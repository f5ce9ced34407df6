"""The vLLM engine, reached over its OpenAI-compatible HTTP API (no torch, no vllm import here).

`client` talks to a running server (health, models, tokenizer probes, completions by token ids,
/metrics); `launcher` starts and stops one from another Python environment with a speculative
config derived from a specprof draft name.
"""
