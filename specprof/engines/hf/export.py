"""`specprof export-draft early-exit:L`: save the target's first L layers as a model directory.

Engines run a draft model from a directory (vLLM's `{"method": "draft_model", "model": DIR}`,
SGLang's `--speculative-draft-model-path DIR`). An early-exit draft is a view on the target's
weights (`drafts.early_exit_view`): its embeddings, first L decoder layers, final norm and LM head.
Saved with `save_pretrained` (safetensors) next to the target's tokenizer, that directory proposes
exactly what `early-exit:L` proposes in the profile (tests check the logits).
"""

from __future__ import annotations

from pathlib import Path

from specprof.core.simulation import kinds
from specprof.core.vocabulary import EARLY_EXIT
from specprof.engines.hf.drafts import early_exit_view
from specprof.engines.hf.models import LoadedModel
from specprof.errors import SpecprofError


def export_early_exit(target: LoadedModel, spec: str, out: Path, overwrite: bool = False) -> Path:
    parsed = kinds.parse(spec)
    layers = parsed.value
    if parsed.kind.name != EARLY_EXIT or layers is None:
        raise SpecprofError(f"export-draft {spec}: only early-exit:L drafts are made from the target")
    if not 1 <= layers < target.num_layers:
        raise SpecprofError(
            f"export-draft {spec}: L must be between 1 and {target.num_layers - 1} (the target has "
            f"{target.num_layers} layers)"
        )
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SpecprofError(f"--out {out}: directory is not empty; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    view = early_exit_view(target.model, layers)
    view.save_pretrained(out)
    target.tokenizer.save_pretrained(out)
    return out
