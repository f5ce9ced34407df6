"""What profiling an EAGLE-3 head for every k adds to a profile, against the target's own generation.

Issue 22's goal: profiling a head for every k = 1..k_max (k_max = 8) adds at most one target
generation's time. The head's part of a profile is `draft_passes` in run.json's `phases_s`: the
teacher-forced pass that captures the target's states at the head's layers, the head's causal pass
over every prefix, and its depths 2..k_max from every block start at once (`eagle3_profile`). The
target's generation is `generation` in the same run, under the same load: the ratio of the two is
the figure, measured in one process.

The head is the crude head `distill --arch eagle3` starts from (vLLM's default captured layers, the
target's last decoder layer, its LM head) over the target's *whole* vocabulary: one decoder layer and
`fc` cost the same whatever the weights, and a full draft vocabulary is the dearest LM head a head
can have (a distilled head keeps at most 16,384 tokens).

    OMP_NUM_THREADS=1 python benchmarks/head_profile_speed.py [--limit 2] [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import emit, environment, load_target, prompts, run_profile

from specprof.engines.hf import distill_eagle3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=2, help="prompts per domain of sample_prompts/")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--k-max", type=int, default=8)
    args = ap.parse_args()

    from specprof.engines.hf.profiler import Settings

    target = load_target()
    corpus = prompts(args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        head_dir = Path(tmp) / "head"
        head_dir.mkdir()
        n_layers = int(target.model.config.get_text_config().num_hidden_layers)
        vocab = int(target.model.config.get_text_config().vocab_size)
        head = distill_eagle3.initial_head(target, distill_eagle3.aux_layers(n_layers), torch.arange(vocab))
        distill_eagle3.save_head(head, head_dir)
        settings = Settings(batch_size=32, k_max=args.k_max, max_new_tokens=args.max_new_tokens)
        result = run_profile(target, [f"eagle3:{head_dir}"], corpus, settings)
    phases = result.run["phases_s"]
    generation, head_s = phases["generation"], phases["draft_passes"]
    n_prompts = len(corpus)
    table = [
        ("prompts × new tokens", f"{n_prompts} × ≤{args.max_new_tokens}, k_max = {args.k_max}"),
        ("target generation", f"{generation:.1f} s"),
        ("head: capture + every start, every k", f"{head_s:.1f} s ({head_s / generation:.2f}× the generation; "
                                                 "goal ≤ 1)"),
        ("cost timing (all drafts)", f"{phases.get('cost_timing', float('nan')):.1f} s"),
    ]
    emit(table, {"generation_s": generation, "head_passes_s": head_s, "ratio": head_s / generation,
                 "n_prompts": n_prompts, "max_new_tokens": args.max_new_tokens, "k_max": args.k_max,
                 **environment(target)})


if __name__ == "__main__":
    main()
