"""The torch-free core: what is measured and what it means, computed from records and files.

Corpus reading, n-gram proposers, block traces, the cost model, statistics, estimates, the report's
schema and files, and the analyses built on them (recommend, gate, compare, inspect). Nothing here
imports torch or transformers (tests/test_layers.py checks it in a fresh interpreter), so CI jobs
that only read reports install nothing heavy. See docs/design.md, "Layers".
"""
