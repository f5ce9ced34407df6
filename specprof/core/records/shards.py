"""Split a corpus into shards (`profile --shard i/n`): which prompts a shard holds, and what it records.

A prompt belongs to shard 1 + (SHA-256 of its id mod n): the split depends on the ids alone, so
it is stable when the corpus is reordered or re-read, and any job runner can hand out `i/n`.
Each shard's run.json records `shard` = {index, count, corpus_fingerprint, n_prompts} of the
whole selected corpus, which is how `merge` knows the shards belong to one run.

Merging the shards' reports is `commands/merge.py`. No torch here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from specprof.core.records import corpus as corpus_mod
from specprof.core.records import reportfiles, schema, store
from specprof.errors import SpecprofError

# run.json entries every shard of a run shares, with the words used to name them (besides `shard`).
SAME = {"schema_version": "schema version", "specprof_version": "specprof version",
        **{k: v for k, v in store.IDENTITY.items() if k != "corpus_fingerprint"}}


def parse_shard(spec: str) -> tuple[int, int]:
    """`i/n` → (i, n), 1 ≤ i ≤ n."""
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        raise SpecprofError(f"--shard {spec}: expected i/n, e.g. 2/8") from None
    if not 1 <= index <= count:
        raise SpecprofError(f"--shard {spec}: need 1 ≤ i ≤ n")
    return index, count


def shard_of(prompt_id: str, count: int) -> int:
    """The shard (1..count) holding a prompt: by a hash of its id, never by its place in the corpus."""
    digest = hashlib.sha256(prompt_id.encode()).digest()
    return 1 + int.from_bytes(digest[:8], "little") % count


def take_shard(prompts: Sequence[Any], index: int, count: int) -> tuple[list[Any], dict[str, Any]]:
    """The prompts of shard `index`/`count` (perhaps none), and what run.json records about the shard."""
    kept = [p for p in prompts if shard_of(p.id, count) == index]
    info = {"index": index, "count": count, "corpus_fingerprint": corpus_mod.fingerprint(prompts),
            "n_prompts": len(prompts)}
    return kept, info


def finish_empty(run_store: store.RunStore) -> None:
    """Finish the report of a shard that holds no prompt (a small corpus, many shards), so `merge` gets all n."""
    import shutil

    for name in ("tokens", "prompts", "summary", "blocks", *schema.OPTIONAL_TABLES):
        reportfiles.write_table(run_store.directory / reportfiles.FILES[name], schema.TABLES[name].empty_table(), name)
    run_store.update(timings=None, finished_at=store.now())
    shutil.rmtree(run_store.directory / store.PARTS, ignore_errors=True)


