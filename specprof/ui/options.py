"""Options and arguments that several commands share, defined once (typed `Annotated` aliases).

A command writes `device: options.Device = "auto"`; the flag's name and help live here, so the
same flag reads the same in every `--help`. Options particular to one command stay with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# --- the report a read-only command reads
Report = Annotated[Path, typer.Argument(metavar="REPORT", help="Report directory or a file in it.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
DraftFilter = Annotated[list[str] | None, typer.Option("--draft", help="Only this draft (repeatable).")]
DomainFilter = Annotated[
    list[str] | None, typer.Option("--domain", help="Only this domain (repeatable; ALL for the corpus).")
]
Tokenizer = Annotated[
    str | None, typer.Option("--tokenizer", help="Tokenizer directory or id, if not the target's.")
]
Concurrency = Annotated[
    list[str] | None,
    typer.Option("--concurrency", help="Serving batch sizes, comma-separated or repeated (e.g. 1,4,16)."),
]

# --- loading models
Target = Annotated[
    str | None,
    typer.Option("--target", help="Target model: HF id, local directory or .gguf. "
                 "Default: embedded SmolLM2-135M-Instruct."),
]
Drafts = Annotated[
    list[str] | None,
    typer.Option(
        "--draft",
        help="Draft (repeatable): a model (id, directory, .gguf), early-exit:L (the target's first L layers), "
        "vllm-ngram[:MIN:MAX] (vLLM's n-gram proposer, default 5:5), prompt-lookup[:M] (transformers' prompt "
        "lookup) or ngram[:N] (specprof's lookup). Default: vllm-ngram and an early exit at 87% of the target's "
        "depth (early-exit:26 of SmolLM2's 30 layers), the drafts an engine can run.",
    ),
]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu, cuda, cuda:N.")]
Dtype = Annotated[
    str, typer.Option("--dtype", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16.")
]
TrustRemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="Allow model repos' own code.")]
AllowPickle = Annotated[bool, typer.Option("--allow-pickle", help="Allow pickle (.bin/.pt) checkpoints.")]
NoChatTemplate = Annotated[bool, typer.Option("--no-chat-template", help="Feed prompts as plain text.")]
BatchSize = Annotated[
    int | None,
    typer.Option("--batch-size", help="Prompts per batch. Default: 32 on a CPU, 64 on CUDA."),
]
