"""The torch-free core: what is measured and what it means, computed from records and files.

Four rooms, in the order the data flows (each may import only the ones before it; tests/test_layers.py
checks it):

    records     corpus, logs, the report's schema and files, shards
    simulation  blocks for every k, block-dependent drafts, policies, engine conventions
    pricing     cost model, timings, bootstrap statistics, pooled estimates
    answers     recommend / gate / compare / inspect results

and three small shared modules every room may use: `vocabulary` (names), `glossary` (definitions)
and `flags`, `jsonvalues` (checks and JSON values). Nothing here imports torch or transformers, so
CI jobs that only read reports install nothing heavy. See docs/design.md, "Layers".
"""
