"""Simulation: per-token records turned into the speculative blocks a draft would run, for every k.

The draft kinds' registry (`kinds`), the block trace (`trace`), per prompt and draft (`traces`), the
drafts whose proposal depends on where a block starts (`blockdraft`, `ngram`), confidence-threshold
drafting (`policy`) and the counters an engine would report under its own conventions (`conventions`).
Counts only: no times, prices, intervals or decisions (those are `pricing` and `answers`). May import
`records`.
"""
