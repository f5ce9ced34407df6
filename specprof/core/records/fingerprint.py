"""The fingerprint of a model directory: which weights a report was made with, without reading them.

File names and sizes of the config, weight and tokenizer files, and the JSON files' contents, hashed:
the same directory gives the same fingerprint on any machine, and either engine (the transformers
engine loading it, or `profile --engine vllm` reading only its config) records the same. No torch here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def directory_fingerprint(directory: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(directory).iterdir()):
        if p.suffix in (".json", ".safetensors", ".bin"):
            h.update(p.name.encode())
            h.update(str(p.stat().st_size).encode())
            if p.suffix == ".json":
                h.update(p.read_bytes())
    return h.hexdigest()[:16]
