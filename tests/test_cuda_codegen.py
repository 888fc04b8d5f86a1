"""The generated CUDA source: every variant compiles with nvcc for sm_90, and a sample meeting
every flag value for sm_80, no GPU needed.

The variants of tests/product.py (LazyAdam's float32 and float64 product, 576, and a half-precision
sample of 288 that meets every flag; the family's product wherever the CUDA target renders it) go
into translation units of UNIT_SIZE variants (the templates guard what sources share), compiled to
PTX by nvcc runs, one per core at a time; a passing unit is remembered in the kernel cache, keyed
by its sources and nvcc's version, so reruns are instant. A few variants go through the target's
own build, two in one batch (host launchers, device code for both archs, static CUDA runtime,
shared library).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import product
from lazyadam import Spec, generate
from lazyadam.codegen import SUM_CHUNK
from lazyadam.errors import CompilationError
from lazyadam.targets import batch, cache, cuda, nvcc

ARCHS = ("80", "90")
#: The arch for which every variant is checked: the H100's and H200's. The sources hold nothing
#: that depends on the arch (no `__CUDA_ARCH__`), so the other arch checks the products' samples
#: (`product.SAMPLE`, `product.FAMILY_SAMPLE`: every value of every flag and storage field), one
#: call where the whole product took six (about 65 CPU-seconds).
FULL_ARCH = "90"
#: Variants per nvcc call at most: each call costs about 2.9 CPU-seconds of headers (cub's
#: included) and 0.023 a variant (10 variants took 3.1 CPU-seconds, 100 took 5.1, 400 took
#: 11.9), so 400 to a call take 140 CPU-seconds for both archs where 100 took 245; a dozen calls
#: still share two cores evenly.
UNIT_SIZE = 400
#: NVVM's optimizer off: a variant is parsed, type-checked, instantiated (cub's templates too) and
#: lowered to PTX for each arch as at -O3, where every error and warning of the sources shows,
#: in a fifth of the time (100 variants: 4.6 CPU-seconds against 14.3). The optimized device
#: code is built by the target's own command below and by every GPU run.
FAST = ("-Xcicc", "-O0")


def nvcc_or_skip() -> str:
    path = nvcc.nvcc()
    if path is None:
        pytest.skip("nvcc not found on PATH, $CUDA_HOME/bin or /usr/local/cuda/bin (LAZYADAM_NVCC "
                    "names another)")
    return path


def run_nvcc(cmd: list[str], folder: Path) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
    if proc.returncode != 0:
        raise CompilationError(f"nvcc failed (exit {proc.returncode})",
                               log=f"$ {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}")


def compile_unit(nvcc: str, arch: str, sources: list, folder: Path) -> Path:
    """Writes the sources and a unit including them all, compiles it to PTX for sm_`arch`."""
    for source in sources:
        (folder / source.filename).write_text(source.text)
        (folder / f"{source.symbol}.h").write_text(source.header)
    unit = folder / "unit.cu"
    unit.write_text("".join(f'#include "{s.filename}"\n' for s in sources))
    command = [nvcc, "--ptx", "-std=c++17", f"-arch=sm_{arch}", "-Werror=all-warnings", *FAST,
               str(unit), "-o", str(folder / "unit.ptx")]
    run_nvcc(command, folder)
    done = folder / "ptx.ok"
    done.write_text(shlex.join(command))
    return done


def units() -> list[tuple[str, list]]:
    """(arch, sources) of each nvcc call: LazyAdam's product (tests/product.py: the float32 and
    float64 product, 576, and a half sample of 288) and the family's (`FAMILY`, where the CUDA
    target renders it) for FULL_ARCH, their samples for the other; in even parts of at most
    UNIT_SIZE variants to a call."""
    def rendered(specs):
        return [generate(spec, "cuda") for spec in specs if product.cuda_refusal(spec) is None]

    every = rendered(product.ALL + product.FAMILY)
    sample = rendered(product.SAMPLE + product.FAMILY_SAMPLE)
    return [(arch, unit) for arch in ARCHS
            for unit in batch.even_parts(every if arch == FULL_ARCH else sample, UNIT_SIZE)]


@pytest.mark.slow
def test_every_variant_compiles_with_nvcc(pulse):
    """Every variant to PTX with nvcc (see `units`), one unit of UNIT_SIZE variants a call (the
    templates guard what sources share), a call per core at a time; a passing unit is remembered
    in the kernel cache, keyed by its sources and nvcc's version, so reruns are instant."""
    nvcc = nvcc_or_skip()
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    todo = [(arch, sources, cache.make_key({"target": "cuda-ptx-check", "arch": arch,
                                            "flags": FAST, "nvcc": version,
                                            "sources": [s.text + s.header for s in sources]}))
            for arch, sources in units()]
    todo = [unit for unit in todo if not (cache.entry(unit[2]) / "ptx.ok").exists()]

    def one(numbered):
        number, (arch, sources, key) = numbered
        pulse(f"compiling {len(sources)} CUDA variants to PTX for sm_{arch} with nvcc "
              f"(call {number}/{len(todo)})")
        return cache.fetch(key, "ptx.ok", lambda folder: compile_unit(nvcc, arch, sources, folder))

    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
        assert all(path.exists() for path in pool.map(one, enumerate(todo, 1)))


#: Built by the target's own command: a sparse and a dense variant, most flags on.
TARGET_BATCH = [
    Spec(sparse=True, use_locking=True, amsgrad=True, decay="l2", dtype="float64", index_dtype="int32"),
    Spec(sparse=False, use_locking=True, amsgrad=True, nesterov=True, decay="decoupled"),
]


def test_target_builds_a_batch_into_one_loadable_library(monkeypatch, pulse):
    """The target's own nvcc command (host launchers, device code for both archs, static CUDA
    runtime) on a batch: both variants in one call and one library, cached kernel by kernel;
    dlopen needs no GPU."""
    nvcc_or_skip()
    monkeypatch.setenv("LAZYADAM_CUDA_ARCH", ",".join(ARCHS))
    monkeypatch.setattr(cuda.TARGET, "unavailable", lambda: None)
    assert batch.build(TARGET_BATCH, cuda.TARGET, report=pulse) == []
    kernels = [cuda.TARGET.load(spec) for spec in TARGET_BATCH]
    assert kernels[0].path != kernels[1].path and kernels[0].path.samefile(kernels[1].path)
    for kernel in kernels:
        assert getattr(kernel.lib, kernel.source.symbol)
        assert getattr(kernel.lib, f"{kernel.source.symbol}_error")
        assert kernel.lib.LAZYADAM_ECUDA == -5
        assert kernel.path.with_name(kernel.source.filename).read_text() == kernel.source.text


def test_build_failure_carries_the_nvcc_log(tmp_path, monkeypatch):
    nvcc_or_skip()
    monkeypatch.setenv("LAZYADAM_CUDA_ARCH", "80")
    source = generate(Spec(), "cuda")
    # The error alone, not after a whole kernel: nvcc stops at it in a second, not five.
    broken = type(source)(source.symbol, "cuda", "syntax error here\n", source.header, source.cdef)
    with pytest.raises(CompilationError, match="nvcc failed") as err:
        cuda.TARGET.build(broken, tmp_path)
    assert "syntax" in err.value.log and err.value.log_path.exists()


def test_the_rule_is_printed_from_the_ir_into_device_functions():
    f32 = generate(Spec(sparse=True, nesterov=True), "cuda").text
    assert re.search(r"__device__ __forceinline__ float \w+_grad\(", f32)
    assert "sqrtf(v_i)" in f32 and "beta1 * m_i + one_minus_beta1 * g_i" in f32
    assert "s.lr_t = (float)(hp->lr * sqrt(1.0 - hp->beta2_power) / (1.0 - hp->beta1_power));" in f32
    f64 = generate(Spec(sparse=False, amsgrad=True, dtype="float64"), "cuda").text
    assert "sqrt(vmax_i)" in f64 and "sqrtf" not in f64


def test_half_precision_uses_the_toolkit_types_and_vector_loads():
    dense = generate(Spec(sparse=False, dtype="bfloat16", rounding="stochastic"), "cuda")
    assert "#include <cuda_bf16.h>" in dense.header
    assert "typedef __nv_bfloat16 lazyadam_bfloat16;" in dense.header
    assert "float var_i = __bfloat162float(var), m_i = m, v_i = v;" in dense.text
    assert "var = __float2bfloat16_rn(lazyadam_bf16_stochastic(var_i, " in dense.text
    # 16 bytes of float32 state a load: 4 elements, 8 bytes of the bfloat16 parameter and gradient
    assert "#define LAZYADAM_DENSE_BF16_SR_VECTOR 4" in dense.text
    assert "lazyadam_vec<lazyadam_bfloat16, LAZYADAM_DENSE_BF16_SR_VECTOR>" in dense.text
    compact = generate(Spec(sparse=False, dtype="float16", state_dtype="bfloat16"), "cuda").text
    assert "#define LAZYADAM_DENSE_F16_MBF16_VECTOR 8" in compact
    assert "__half2float(grad)" in compact and "m = __float2bfloat16_rn(m_i);" in compact
    assert "lazyadam_bf16_stochastic" not in compact  # no stochastic helpers without it
    sparse = generate(Spec(dtype="float16", grad_dtype="float32", rounding="stochastic"), "cuda")
    assert "var_row[j] = __float2half_rn(lazyadam_f16_stochastic(var_i, lazyadam_random_bits(" \
           "rounding_key0, row * row_size + j)));" in sparse.text
    assert "s.rounding_key0 = lazyadam_step_key(hp->seed, hp->step, 0u);" in sparse.text
    state = generate(Spec(dtype="bfloat16", state_dtype="bfloat16", rounding="stochastic"), "cuda")
    assert "m_row[j] = __float2bfloat16_rn(lazyadam_bf16_stochastic(m_i, (lazyadam_random_bits(" \
           "rounding_key0, row * row_size + j) << 16)));" in state.text


def test_no_floating_point_atomics_and_no_table_sized_scratch():
    for spec in (Spec(sparse=True), Spec(sparse=True, use_locking=True, decay="l2")):
        text = generate(spec, "cuda").text
        assert "atomicAdd" not in text
        carves = re.findall(r"lazyadam_carve\(base, at, (.*?), .*?\);", text)
        assert len(carves) == 11 and all("rows" not in count for count in carves)
        assert any("nnz" in count for count in carves)  # scratch grows with nnz, not the table


def test_sparse_launchers_call_cub_and_keep_the_summation_order_constant():
    text = generate(Spec(sparse=True), "cuda").text
    for call in ("cub::DeviceRadixSort::SortPairs", "cub::DeviceRunLengthEncode::Encode",
                 "cub::DeviceScan::ExclusiveSum"):
        assert call in text
    assert f"#define LAZYADAM_SUM_CHUNK {SUM_CHUNK}" in text
    assert f"#define SUM_CHUNK {SUM_CHUNK}" in generate(Spec(sparse=True)).text


def test_launchers_take_a_stream_and_locks_appear_only_when_asked():
    plain = generate(Spec(sparse=False), "cuda")
    locked = generate(Spec(sparse=False, use_locking=True), "cuda")
    assert "const lazyadam_hparams *hp, cudaStream_t stream);" in plain.header
    assert "_multi(int64_t count" in plain.header
    assert "lazyadam_lock" not in plain.text and "lazyadam_lock(var + begin)" in locked.text
    sparse = generate(Spec(sparse=True, use_locking=True), "cuda").text
    assert "lazyadam_lock(var_row)" in sparse and "__syncwarp()" in sparse


def test_unavailable_names_what_is_missing(monkeypatch):
    monkeypatch.setenv("LAZYADAM_NVCC", "/nonexistent/nvcc")
    assert nvcc.unavailable().startswith("nvcc not found")
    monkeypatch.delenv("LAZYADAM_NVCC")
    if nvcc.nvcc() is not None and nvcc.device_count() == 0:
        assert "no CUDA" in nvcc.unavailable()


def test_arch_list_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LAZYADAM_CUDA_ARCH", "sm_90;80")
    assert nvcc.archs() == ("80", "90")
    assert nvcc.gencode(["80", "90"])[-1] == "-gencode=arch=compute_90,code=compute_90"


def test_generated_sources_are_dumpable(tmp_path, monkeypatch):
    monkeypatch.setenv("LAZYADAM_DUMP", str(tmp_path))
    source = generate(Spec(sparse=True), "cuda")
    folder = tmp_path / f"{source.symbol}.cuda"
    assert (folder / "06-source.txt").read_text().rstrip("\n") == source.text.rstrip("\n")
    assert os.listdir(folder)
