"""What this machine offers the targets (`lazyadam info`): compilers, OpenMP, nvcc, pycuda, GPUs, cache.

Every probe returns a line of text and never raises: a missing tool reads "not found (...)".
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import c, cache, nvcc as cuda_toolchain

TIMEOUT_SECONDS = 30.0

_OPENMP_PROBE = """\
#include <omp.h>
#include <stdio.h>
int main(void) { printf("%d", omp_get_max_threads()); return 0; }
"""


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess | str:
    """The finished process, or why it could not run."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
                              **kwargs)
    except (OSError, subprocess.SubprocessError) as err:
        return f"{cmd[0]} could not run: {err}"


def c_compiler() -> str:
    """The C compiler command (its path) and the first line of its `--version`."""
    if c.unavailable():
        return f"not found (tried {' '.join(c.compiler()) or '(empty)'}; set LAZYADAM_CC or CC)"
    cmd = c.compiler()
    proc = _run([*cmd, "--version"])
    if isinstance(proc, str):
        return f"not usable ({proc})"
    version = (proc.stdout.strip().splitlines() or ["(no --version output)"])[0]
    return f"{' '.join([shutil.which(cmd[0]) or cmd[0], *cmd[1:]])} ({version})"


def openmp() -> str:
    """Whether the C compiler builds and runs an OpenMP program, and with how many threads."""
    if c.unavailable():
        return "not found (no C compiler)"
    with tempfile.TemporaryDirectory(prefix="lazyadam-omp-") as tmp:
        src, exe = Path(tmp) / "omp.c", Path(tmp) / "omp"
        src.write_text(_OPENMP_PROBE)
        built = _run([*c.compiler(), "-fopenmp", str(src), "-o", str(exe)])
        if isinstance(built, str):
            return f"not found ({built})"
        if built.returncode != 0:
            last = (built.stderr.strip().splitlines() or ["no message"])[-1]
            return f"not found ({' '.join(c.compiler())} -fopenmp failed: {last})"
        ran = _run([str(exe)])
        if isinstance(ran, str) or ran.returncode != 0:
            return "not usable (an OpenMP program was built but did not run)"
        return f"yes (-fopenmp, {ran.stdout.strip()} threads)"


def nvcc() -> str:
    """nvcc's path and release."""
    path = cuda_toolchain.nvcc()
    if path is None:
        return "not found (tried LAZYADAM_NVCC, PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)"
    proc = _run([path, "--version"])
    if isinstance(proc, str):
        return f"not usable ({proc})"
    release = [line for line in proc.stdout.splitlines() if "release" in line]
    return f"{path} ({release[0].strip() if release else 'unknown release'})"


def pycuda() -> str:
    """Whether pycuda can be imported (not imported here: that would start a CUDA context)."""
    if importlib.util.find_spec("pycuda") is None:
        return "not found (pip install 'lazyadam[cuda]')"
    try:
        return f"yes ({importlib.metadata.version('pycuda')})"
    except importlib.metadata.PackageNotFoundError:
        return "yes (version unknown)"


def gpu() -> str:
    """The CUDA GPUs the driver sees, named by `nvidia-smi -L` when it is there."""
    count = cuda_toolchain.device_count()
    smi = shutil.which("nvidia-smi")
    names: list[str] = []
    if smi:
        proc = _run([smi, "-L"])
        if not isinstance(proc, str) and proc.returncode == 0:
            names = [line.split(" (UUID")[0] for line in proc.stdout.splitlines() if line.strip()]
    if count:
        return f"{count} CUDA device(s)" + (f": {'; '.join(names)}" if names else "")
    return ("not found (no CUDA driver, or it sees no device; "
            f"nvidia-smi {'lists ' + str(len(names)) if smi else 'not found'})")


def cache_dir() -> str:
    """The cache directory, how many entries it holds, and whether the cache is switched off."""
    if not cache.enabled():
        return f"{cache.root()} (disabled by LAZYADAM_DISABLE_CACHE)"
    return f"{cache.root()} ({len(cache.entries())} entries)"


def report() -> dict[str, str]:
    """Every probe, by the name `lazyadam info` prints."""
    return {"C compiler": c_compiler(), "OpenMP": openmp(), "nvcc": nvcc(), "pycuda": pycuda(),
            "GPU": gpu(), "cache": cache_dir()}
