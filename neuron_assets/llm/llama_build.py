"""Which CPU extensions the installed llama.cpp was compiled for, and whether this host runs them.

llama-cpp-python compiles llama.cpp from source, by default with ``-march=native``: a
build made on one host can use instructions the next host lacks, and a host can
advertise an extension in its CPU flags that its hypervisor then traps. Both were seen:
on an Intel Xeon virtual machine whose flags list ``amx_int8`` and ``amx_tile``, a
native build died with "invalid opcode" on its first multi-token prompt.

So ``make install`` builds llama.cpp once, for fixed instruction sets (see the Makefile): a
portable build (AVX2, FMA, F16C, BMI2; no AVX-512, no AMX) installed in the venv, and
variants beside it under ``<venv>/llama-cpp-variants/<name>/``, each a copy of that build
whose CPU backend (``libggml-cpu.so``, the only library compiled for an instruction set) was
compiled again with more extensions, with the CMake arguments it was built with (today
``avx512``). The local server tries the variants the host's CPU flags allow, then the
portable build, and keeps the first that evaluates a real prompt (a trapped instruction
kills the process there). In the server process, the build's compiled features
(``llama_print_system_info``, which reports compile-time features) are checked against
the host's CPU flags:

- an extension the build needs and the host does not advertise is a clear error naming
  it, instead of an "illegal instruction" crash;
- a build with AMX kernels (someone else's native build) is run with llama.cpp's extra
  buffer types turned off: AMX is only reached through them, and a hypervisor may trap
  it whatever the flags say.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# llama.cpp's feature names (as llama_print_system_info writes them) -> Linux /proc/cpuinfo flag.
CPU_FLAG_OF_FEATURE = {
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX_VNNI": "avx_vnni",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}
# Extensions a virtual machine can advertise and still trap; llama.cpp only uses them
# through its extra (repacking) buffer types.
TRAPPABLE_FEATURES = frozenset({"AMX_INT8"})
VARIANTS_DIR = Path(sys.prefix) / "llama-cpp-variants"
CMAKE_ARGS_FILE = "cmake-args"


@dataclass(frozen=True)
class LlamaBuild:
    """One installed llama-cpp-python: ``path`` goes first on the server's PYTHONPATH (None: the venv's own)."""

    name: str
    path: Path | None
    features: frozenset[str]


class UnsupportedBuildError(RuntimeError):
    """The installed llama.cpp uses CPU instructions this host does not offer."""


def compiled_features(system_info: str) -> set[str]:
    """The CPU features a ``llama_print_system_info()`` string reports as compiled in (``NAME = 1``)."""
    features = set()
    for part in system_info.replace("\n", "|").split("|"):
        name, _, value = part.rpartition("=")
        if value.strip() == "1":
            features.add(name.strip().rsplit(":", 1)[-1].strip())
    return features


def installed_features() -> set[str]:
    """The CPU features the installed llama-cpp-python's llama.cpp was compiled for."""
    import llama_cpp

    return compiled_features(llama_cpp.llama_print_system_info().decode("utf-8", errors="replace"))


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The host's CPU model name, printed with every benchmark: ratios differ from host to host."""
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def host_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU flags the kernel reports for this host (empty where there is no /proc/cpuinfo)."""
    if not cpuinfo.exists():
        return set()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def missing_on_host(features: Iterable[str], flags: set[str]) -> list[str]:
    """The compiled x86 features whose CPU flag the host does not advertise."""
    return sorted(f for f in features if f in CPU_FLAG_OF_FEATURE and CPU_FLAG_OF_FEATURE[f] not in flags)


def check_build_runs_here(features: set[str], flags: set[str]) -> None:
    """Raise ``UnsupportedBuildError`` naming every compiled extension this host lacks.

    Only x86 features are checked, and only where the kernel reports flags at all.
    """
    if not flags:
        return
    missing = missing_on_host(features, flags)
    if missing:
        raise UnsupportedBuildError(
            f"the installed llama-cpp-python was compiled for CPU extensions this host does not offer: "
            f"{', '.join(missing)}. Rebuild it for this host: rm -rf .wheels && make install "
            f"(the Makefile's LLAMA_CMAKE_ARGS set the instruction set)"
        )


def needs_extra_buffer_types_off(features: set[str]) -> bool:
    """Whether the build has kernels (AMX) that a hypervisor may trap although the CPU flags list them."""
    return bool(features & TRAPPABLE_FEATURES)


def cmake_features(cmake_args: str) -> set[str]:
    """The llama.cpp features a CMake command line turns on (the last ``-DGGML_X=ON|OFF`` for each X wins)."""
    switches: dict[str, bool] = {}
    for arg in cmake_args.split():
        name, _, value = arg.removeprefix("-D").partition("=")
        if name.startswith("GGML_") and value.upper() in {"ON", "OFF"}:
            switches[name.removeprefix("GGML_")] = value.upper() == "ON"
    return {name for name, on in switches.items() if on and name in CPU_FLAG_OF_FEATURE}


def installed_variants(root: Path = VARIANTS_DIR) -> list[LlamaBuild]:
    """The builds installed beside the venv's own, from the CMake arguments stored with each."""
    if not root.is_dir():
        return []
    return [
        LlamaBuild(folder.name, folder, frozenset(cmake_features((folder / CMAKE_ARGS_FILE).read_text())))
        for folder in sorted(root.iterdir())
        if (folder / CMAKE_ARGS_FILE).is_file()
    ]


def builds_to_try(flags: set[str], variants: list[LlamaBuild]) -> list[LlamaBuild]:
    """The variants whose extensions this host advertises, then the venv's portable build.

    Where the kernel reports no CPU flags, only the portable build is tried.
    """
    usable = [v for v in variants if flags and not missing_on_host(v.features, flags)]
    return [*usable, LlamaBuild("portable", None, frozenset())]
