"""Records: what a run reads and writes, and nothing computed from it.

The prompt corpus and logged traffic (`corpus`, `logs`), the report's schema and its files
(`schema`, `reportfiles`, `store`: atomic writes, part files, run.json), shards of a corpus
(`shards`), the fingerprints of model directories, the target's continuations (`sequences`) and the
text of its tokens (`tokentext`). Not here: blocks, prices or decisions (the rooms after this one).
Imports nothing else from the core but `vocabulary`, `flags`, `jsonvalues` and `glossary`.
"""
