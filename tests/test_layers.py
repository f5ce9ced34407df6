"""The package's layers (docs/design.md, "Layers"): arrows point down, and the core never loads torch.

    ui  →  commands  →  engines  →  core        (errors and __version__ sit below them all)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import specprof

PACKAGE = Path(specprof.__file__).parent
RANK = {"core": 0, "engines": 1, "commands": 2, "ui": 3}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "specprof" and parts[1] in RANK else None


def modules(layer: str) -> list[str]:
    return sorted(
        ".".join(("specprof", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        for p in (PACKAGE / layer).rglob("*.py")
    )


def imported(path: Path) -> set[str]:
    """Every specprof module that `path` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("specprof"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("specprof"))
    return names


def test_every_module_sits_in_a_layer():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py", "errors.py"))
    assert loose == []


def test_every_module_is_under_400_lines():
    """One job per module (STYLE.md): a module that grows past 400 lines is doing a second thing."""
    lines = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    long = {name: n for name, n in lines.items() if n >= 400}
    assert long == {}


def test_imports_only_point_down():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        here = layer_of(".".join(("specprof", *path.relative_to(PACKAGE).parts)))
        if here is None:
            continue
        for name in imported(path):
            there = layer_of(name)
            if there is not None and RANK[there] > RANK[here]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert wrong == []


def test_core_imports_without_torch():
    """Every core module, imported in a fresh interpreter, loads neither torch nor transformers."""
    mods = modules("core")
    assert len(mods) > 10
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# The core's rooms in the order the data flows (specprof/core/__init__.py): a room imports only rooms before it.
# The shared modules (vocabulary, glossary, flags, jsonvalues) sit below them all.
ROOMS = {"records": 1, "simulation": 2, "pricing": 3, "answers": 4}


def room_of(module: str) -> int | None:
    """The rank of a core module's room; 0 for the shared modules, None outside the core."""
    parts = module.split(".")
    if parts[:2] != ["specprof", "core"] or len(parts) < 3:
        return None
    return ROOMS.get(parts[2], 0)


def test_core_rooms_import_only_rooms_before_them():
    wrong = []
    for path in (PACKAGE / "core").rglob("*.py"):
        here = room_of(".".join(("specprof", *path.relative_to(PACKAGE).with_suffix("").parts)))
        for name in imported(path):
            there = room_of(name)
            if there is not None and here is not None and there > here:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert wrong == []


def test_every_core_module_sits_in_a_room_or_is_shared():
    shared = sorted(p.stem for p in (PACKAGE / "core").glob("*.py") if p.stem != "__init__")
    assert shared == ["flags", "glossary", "jsonvalues", "vocabulary"]
    assert sorted(p.name for p in (PACKAGE / "core").iterdir() if p.is_dir() and p.name != "__pycache__") == \
        sorted(ROOMS)


# The vLLM path stands on its own (issue 21): the vLLM engine and the commands that drive it import nothing
# of the transformers engine, so they run where torch is absent (tests/test_vllm_without_torch.py runs them).
VLLM_MODULES = [*(PACKAGE / "engines" / "vllm").rglob("*.py"),
                *(PACKAGE / "commands" / name for name in ("profile_vllm.py", "verify_vllm.py", "vllm_common.py",
                                                           "verify_concurrency.py")),
                PACKAGE / "engines" / "text.py", PACKAGE / "engines" / "modelfiles.py"]


def test_vllm_modules_import_no_transformers_engine():
    assert all(p.exists() for p in VLLM_MODULES)
    wrong = sorted(f"{p.relative_to(PACKAGE)} imports {name}" for p in VLLM_MODULES for name in imported(p)
                   if name == "specprof.engines.hf" or name.startswith("specprof.engines.hf."))
    assert wrong == []
    commands = {p.relative_to(PACKAGE).as_posix() for p in VLLM_MODULES}
    every_vllm_command = {f"commands/{p.name}" for p in (PACKAGE / "commands").glob("*.py") if "vllm" in p.name}
    assert every_vllm_command <= commands
