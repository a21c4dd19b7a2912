"""The local llama.cpp server runs on any x86-64 host: a portable build, checked at start-up.

Pinned here: the installed build uses no CPU extension that a virtual machine may advertise
and trap (AMX, and no AVX-512 either), every extension it does use is advertised by this
host, a build with AMX kernels is started with them out of reach, and a server that dies
on its first multi-token prompt is reported as such at start-up (``/models`` alone passed
on the host where the native build crashed).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neuron_assets.llm import llama_build
from neuron_assets.llm.llama_build import LlamaBuild
from neuron_assets.llm.llama_server import LLMServerError, LLMServerExited, LocalLlamaServer

FAKE_SERVER = Path(__file__).with_name("fake_llama_server.py")
NATIVE_SAPPHIRE_RAPIDS = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | "
    "OPENMP = 1 | REPACK = 1 | "
)
XEON_FLAGS = set(
    "fpu sse sse2 pni ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 avx512f avx512_vnni amx_int8 amx_tile".split()
)


def test_system_info_is_read_as_the_set_of_compiled_features():
    features = llama_build.compiled_features(NATIVE_SAPPHIRE_RAPIDS)
    assert {"AVX2", "AVX512", "AMX_INT8", "REPACK"} <= features
    assert llama_build.compiled_features("CPU : AVX = 1 | AVX2 = 0 | ") == {"AVX"}


def test_the_installed_build_uses_no_extension_a_hypervisor_can_trap_nor_avx512():
    features = llama_build.installed_features()
    assert "AVX2" in features  # the portable baseline, not a bare build
    assert not features & {"AMX_INT8", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AVX_VNNI"}
    assert not llama_build.needs_extra_buffer_types_off(features)


def test_every_extension_the_installed_build_uses_is_advertised_by_this_host():
    assert llama_build.missing_on_host(llama_build.installed_features(), llama_build.host_cpu_flags()) == []


def test_a_build_for_extensions_the_host_lacks_is_refused_naming_them():
    older_host = XEON_FLAGS - {"avx512f", "avx512_vnni", "amx_int8", "amx_tile", "avx_vnni"}
    features = llama_build.compiled_features(NATIVE_SAPPHIRE_RAPIDS)
    with pytest.raises(llama_build.UnsupportedBuildError, match="AMX_INT8, AVX512, .*AVX_VNNI.*make install"):
        llama_build.check_build_runs_here(features, older_host)


def test_a_build_with_amx_kernels_is_started_with_extra_buffer_types_off(monkeypatch):
    import llama_cpp.llama_cpp as bindings

    from neuron_assets.llm import llama_server

    monkeypatch.setattr(
        llama_build, "installed_features", lambda: llama_build.compiled_features(NATIVE_SAPPHIRE_RAPIDS)
    )
    monkeypatch.setattr(llama_build, "host_cpu_flags", lambda: XEON_FLAGS | {"avx_vnni", "avx512vbmi", "avx512_bf16"})
    monkeypatch.setattr(bindings, "llama_model_default_params", bindings.llama_model_default_params)
    assert bindings.llama_model_default_params().use_extra_bufts
    llama_server._prepare_build()
    assert not bindings.llama_model_default_params().use_extra_bufts


def test_the_server_entry_point_stops_with_the_reason_when_the_build_cannot_run_here(monkeypatch, capsys):
    from neuron_assets.llm import llama_server

    monkeypatch.setattr(llama_build, "installed_features", lambda: {"AVX2", "AVX512"})
    monkeypatch.setattr(llama_build, "host_cpu_flags", lambda: {"avx", "avx2"})
    with pytest.raises(SystemExit) as stop:
        llama_server._prepare_build()
    assert stop.value.code == 3
    assert "compiled for CPU extensions this host does not offer: AVX512" in capsys.readouterr().err


PORTABLE = LlamaBuild("portable", None, frozenset())


class FakeServer(LocalLlamaServer):
    """Stand-in server processes: ``behaviours`` maps each build's name to how its process behaves."""

    def __init__(self, builds=(PORTABLE,), **behaviours):
        super().__init__(Path("unused.gguf"), "fake", startup_timeout_s=20, builds=list(builds))
        self.behaviours = behaviours

    def command(self):
        return [sys.executable, str(FAKE_SERVER), str(self.port), self.behaviours[self.build.name]]


def test_a_server_that_dies_on_its_first_multi_token_prompt_fails_start_up_naming_the_signal():
    with pytest.raises(LLMServerError, match=r"exited at start-up \(signal 4, SIGILL\)") as failure:
        with FakeServer(portable="trap"):
            pass
    assert "evaluating a batch of 42 tokens" in str(failure.value)  # the tail of its log


def test_a_server_killed_after_start_up_is_reported_with_its_signal_and_log():
    with FakeServer(portable="ok") as server:
        server.check_alive()  # running: no error
        os.kill(server.pid, signal.SIGKILL)
        with pytest.raises(LLMServerExited, match=r"exited \(signal 9, SIGKILL\).*\n.*fake llama.cpp server on port"):
            server.check_alive()


def test_a_server_whose_parent_is_killed_outright_exits_instead_of_serving_on(tmp_path):
    """The server's entry point calls ``exit_with_parent`` first: here a grandchild does, under a
    parent that is then SIGKILLed, and the grandchild must be gone within seconds."""
    pid_file = tmp_path / "server.pid"
    grandchild = (
        "import os, time; from neuron_assets.llm.llama_server import exit_with_parent; "
        f"exit_with_parent(0.1); open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", parent])
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    server = int(pid_file.read_text())
    assert running(server)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while running(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(server)


def running(pid):
    """Whether ``pid`` is a live process (a zombie no one has reaped yet is not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_cmake_arguments_are_read_as_the_features_they_turn_on_the_last_switch_winning():
    args = (
        "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON"
    )
    assert llama_build.cmake_features(args) == {"AVX2", "AVX512", "AVX512_VNNI"}


def test_a_variant_is_tried_first_only_where_the_host_advertises_its_extensions(tmp_path):
    (tmp_path / "avx512").mkdir()
    (tmp_path / "avx512" / "cmake-args").write_text("-DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON\n")
    (variant,) = llama_build.installed_variants(tmp_path)
    assert variant == LlamaBuild("avx512", tmp_path / "avx512", frozenset({"AVX2", "AVX512", "AVX512_VNNI"}))
    with_avx512 = {"avx2", "avx512f", "avx512_vnni"}
    assert [b.name for b in llama_build.builds_to_try(with_avx512, [variant])] == ["avx512", "portable"]
    assert [b.name for b in llama_build.builds_to_try({"avx2", "avx512f"}, [variant])] == ["portable"]
    assert [b.name for b in llama_build.builds_to_try(set(), [variant])] == ["portable"]


def test_a_variant_that_dies_on_the_start_up_prompt_gives_way_to_the_portable_build(tmp_path):
    builds = [LlamaBuild("avx512", tmp_path, frozenset()), PORTABLE]
    with FakeServer(builds, avx512="trap", portable="ok") as server:
        server.check_alive()
        assert server.build == PORTABLE
        assert server.describe_build() == (
            "portable build; the avx512 build failed at start-up: "
            "llama.cpp server exited at start-up (signal 4, SIGILL):"
        )


def test_the_installed_avx512_variant_has_no_amx_and_is_chosen_where_the_host_offers_avx512():
    (variant,) = [v for v in llama_build.installed_variants() if v.name == "avx512"]
    assert {"AVX512", "AVX512_VNNI"} <= variant.features and "AMX_INT8" not in variant.features
    flags = llama_build.host_cpu_flags()
    chosen = llama_build.builds_to_try(flags, llama_build.installed_variants())[0]
    if llama_build.missing_on_host(variant.features, flags):
        assert chosen.name == "portable"
        return
    assert chosen == variant
    code = (
        f"import sys; sys.path.insert(0, {str(variant.path)!r}); import llama_cpp; "
        "print(llama_cpp.llama_print_system_info().decode())"
    )
    features = llama_build.compiled_features(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert "AVX512" in features and "AMX_INT8" not in features


def _dynamic_symbols(library: Path) -> set[str]:
    listing = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[-1] for line in listing.splitlines() if line.strip()}


def test_the_avx512_variant_is_the_venvs_build_with_only_its_cpu_backend_recompiled():
    """One llama.cpp build: the variant shares every file with the venv's build but libggml-cpu.so,
    which exports the same functions (the same source, another instruction set)."""
    import llama_cpp

    (variant,) = [v for v in llama_build.installed_variants() if v.name == "avx512"]
    ours = Path(llama_cpp.__file__).parent
    theirs = variant.path / "llama_cpp"
    files = {p.relative_to(ours) for p in ours.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert files == {p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    backends = {f for f in files if f.name.startswith("libggml-cpu.so")}
    assert backends, "the venv's llama_cpp has no libggml-cpu.so"
    for name in sorted(files - backends):
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), f"{name} differs from the venv's build"
    for name in sorted(backends):
        assert (ours / name).read_bytes() != (theirs / name).read_bytes(), f"{name} was not recompiled"
        if shutil.which("nm"):
            assert _dynamic_symbols(ours / name) == _dynamic_symbols(theirs / name)
