"""Build and install fused_rnn.

The compiled extension ``fused_rnn._C`` is built from ``csrc/`` with ninja: the CPU
kernels always, the CUDA kernels when torch has CUDA and nvcc is found. Environment:

- ``FUSED_RNN_SKIP_BUILD=1``: install the pure-Python package only (reference backend).
- ``FUSED_RNN_STRICT_BUILD=1``: a failed extension build is an error instead of a warning.
- ``FUSED_RNN_CUDA_ARCHS``: e.g. ``"8.0;9.0"`` (the default), passed as TORCH_CUDA_ARCH_LIST.
- ``MAX_JOBS``: ninja's parallel jobs; by default capped by cores and by memory.

Install with ``pip install --no-build-isolation -e .`` so the build sees the torch that is
installed (an isolated build would fetch another torch, a CUDA build of several GB).
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _warn(msg: str) -> None:
    print(f"\n*** fused_rnn: {msg}\n", file=sys.stderr)


def _cap_ninja_jobs() -> None:
    """One compile job per core and per ~3 GiB of memory (torch headers are heavy)."""
    if "MAX_JOBS" in os.environ:
        return
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gib = 8
    os.environ["MAX_JOBS"] = str(max(1, min(os.cpu_count() or 1, int(mem_gib // 3))))


def _sources(*patterns):
    return sorted(os.path.relpath(p, ROOT) for pat in patterns
                  for p in glob.glob(os.path.join(ROOT, pat)))


def _openmp_flags():
    """at::parallel_for is an inline `#pragma omp parallel` in torch's headers: without
    OpenMP it compiles to a serial loop. libgomp.so.1 then resolves to the copy torch has
    already loaded. macOS's clang has no -fopenmp: the kernels run on one thread there."""
    if sys.platform.startswith("linux"):
        return ["-fopenmp"]
    if sys.platform == "win32":
        return ["/openmp"]
    return []


def _extensions():
    """(ext_modules, cmdclass) for fused_rnn._C, or ([], {}) when there is nothing to build."""
    if os.environ.get("FUSED_RNN_SKIP_BUILD", "0") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        _warn("torch is not importable at build time, so fused_rnn._C is not built and the "
              "reference backend will be used. Install torch first, then "
              "`pip install --no-build-isolation -e .`")
        return [], {}
    cpu = _sources("csrc/cpu/*.cpp", "csrc/bindings/*.cpp")
    if not cpu:
        return [], {}
    cuda = _sources("csrc/bindings/*.cu", "csrc/cuda/*.cu")
    with_cuda = bool(cuda) and torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    cxx = ["-O3", "-std=c++17"] + _openmp_flags()
    kwargs = dict(name="fused_rnn._C", include_dirs=[os.path.join(ROOT, "csrc", "include")],
                  extra_compile_args={"cxx": cxx}, extra_link_args=_openmp_flags())
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", os.environ.get("FUSED_RNN_CUDA_ARCHS", "8.0;9.0"))
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]
        kwargs["define_macros"] = [("FUSED_RNN_WITH_CUDA", "1")]
        ext = cpp_extension.CUDAExtension(sources=cpu + cuda, **kwargs)
    else:
        ext = cpp_extension.CppExtension(sources=cpu, **kwargs)
    _cap_ninja_jobs()

    class SoftBuildExt(cpp_extension.BuildExtension):
        """A failed build leaves a working package on the reference backend, with a warning."""

        def run(self):
            try:
                super().run()
            except Exception as e:  # noqa: BLE001 - any compiler/toolkit failure
                if os.environ.get("FUSED_RNN_STRICT_BUILD", "0") == "1":
                    raise
                _warn(f"building fused_rnn._C failed ({type(e).__name__}: {e}); installing "
                      "without it, so the reference backend will be used. Set "
                      "FUSED_RNN_STRICT_BUILD=1 to see the failure as an error.")

    return [ext], {"build_ext": SoftBuildExt.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="fused_rnn",
    version="0.1.0",
    description="Fused kernels for LSTM/GRU/RNN and encoder-decoder attention, drop-in for torch.nn",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fused_rnn", "fused_rnn.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "pytest-benchmark>=4", "numpy",
                 "triton>=3.6; platform_system == 'Linux'"],  # wheels: Linux only
        "bench": ["pytest-benchmark>=4", "matplotlib>=3.5"],
        "triton": ["triton>=3.1"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
