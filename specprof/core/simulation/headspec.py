"""Which `--draft` values name an EAGLE-3 head (torch-free: the vLLM launcher and the engine plans need it too).

`eagle3:DIR` always names one; a bare directory does when its config.json is in either layout vLLM
0.32.0 loads: EAGLE/SpecForge (`"architectures": ["LlamaForCausalLMEagle3"]`, vLLM's own
`Eagle3LlamaForCausalLM`) or speculators (`"speculators_model_type": "eagle3"`). `head_directory` is
the one function the draft-kind registry (`kinds.HeadKind`) calls to recognise the kind.
"""

from __future__ import annotations

import json
from pathlib import Path

from specprof.core.vocabulary import EAGLE3
from specprof.errors import SpecprofError

EAGLE_ARCHITECTURES = ("LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM")


def head_directory(spec: str) -> Path | None:
    """The head directory a `--draft` value names, None when it names no EAGLE-3 head.

    `eagle3:DIR` always names one (an error if DIR is not a head); a bare directory does when its
    config.json is in either layout (`kinds.parse` calls it for a spec naming no other kind).
    """
    if spec.startswith(f"{EAGLE3}:"):
        path = Path(spec.removeprefix(f"{EAGLE3}:"))
        if not (path / "config.json").is_file():
            raise SpecprofError(f"--draft {spec}: {path} is not a directory with a config.json")
        return path
    path = Path(spec)
    if (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return None
        if layout_of(config) is not None:
            return path
    return None


def directory_of(spec: str) -> Path:
    """The head directory of a spec `kinds.parse` found to be a head (one line when it is none)."""
    path = head_directory(spec)
    if path is None:
        raise SpecprofError(f"--draft {spec}: not an EAGLE-3 head directory")
    return path


def layout_of(config: dict) -> str | None:
    """'speculators', 'eagle' or None (not an EAGLE-3 head config)."""
    if config.get("speculators_model_type") == EAGLE3:  # speculators spells the kind as we do
        return "speculators"
    if any(a in EAGLE_ARCHITECTURES for a in config.get("architectures") or []):
        return "eagle"
    return None
