"""Every instruction-set path of the decode kernels on the library's own test vectors
(tests/rowdot_driver.cpp): the x86 paths this CPU runs, and ARM64 NEON (with and without the
dotprod extension) built by Debian's cross compiler and run under qemu-aarch64.

The paths with fused multiply-adds sum in the same lanes and reduce in the same tree, so
their results are the same bits; the portable build (x86-64 baseline: no FMA) is within
fp32 rounding of them. The one exception by design: bf16 rows on AVX512_BF16, whose vdpbf16ps
takes pairs of products."""
from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, runnable_isas
from gpt2.fast import rowdot

DRIVER = ROOT / "tests" / "rowdot_driver.cpp"
FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-std=c++17"]
X86 = {"avx512": ["-march=native"], "avx512-skylake": ["-march=skylake-avx512"], "avx2": ["-march=x86-64-v3"],
       "avx2+vnni": ["-march=x86-64-v3", "-mavxvnni"], "portable": ["-DGPT2_PORTABLE"]}
ARM = {"neon+dotprod": ["-march=armv8.2-a+dotprod"], "neon": ["-march=armv8-a"]}


def run_driver(path: str, tmp: Path) -> dict[str, list[float]]:
    """Build the driver for `path` and run it: {result name: values}."""
    arm = path in ARM
    exe = tmp / f"driver-{path}"
    cxx = "aarch64-linux-gnu-g++" if arm else "g++"
    flags = [*FLAGS, *(ARM[path] + ["-static"] if arm else X86[path])]
    subprocess.run([cxx, *flags, str(DRIVER), "-o", str(exe)], check=True, capture_output=True, timeout=600)
    out = subprocess.run(["qemu-aarch64", str(exe)] if arm else [str(exe)], check=True, capture_output=True,
                         text=True, timeout=600).stdout
    results = {}
    for line in out.splitlines():
        name, *values = line.split()
        results[name] = [struct.unpack(">f", bytes.fromhex(v))[0] for v in values] if name != "isa" else values
    return results


def x86_paths() -> list[str]:
    if rowdot.native_isa() not in ("avx512", "avx2"):
        return []
    paths = [p for p in runnable_isas() if p in X86]
    if "avx2" in paths and "avx_vnni" in rowdot.cpu_flags():
        paths.append("avx2+vnni")  # AVX-VNNI's vpdpwssd on 256 bits
    if "avx512" in paths and {"avx512cd", "avx512dq"} <= rowdot.cpu_flags():
        paths.append("avx512-skylake")  # AVX-512 without VNNI or bf16: vpmaddwd on 512 bits
    return paths


def arm_paths() -> list[str]:
    return list(ARM) if shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64") else []


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict[str, list[float]]]:
    tmp = tmp_path_factory.mktemp("isa")
    return {path: run_driver(path, tmp) for path in [*x86_paths(), *arm_paths()]}


def test_each_path_builds_what_it_says(results):
    """gpt2_rowdot_isa's bits: 1 AVX-512, 2 AVX2, 4 NEON; 16 int8 dot product instructions."""
    base = {"avx512": 1, "avx512-skylake": 1, "avx2": 2, "avx2+vnni": 2, "portable": 0, "neon": 4, "neon+dotprod": 4}
    for path, result in results.items():
        isa = int(result["isa"][0])
        assert isa & 7 == base[path], (path, isa)
        if path != "avx512":  # there: as the CPU has VNNI, or not
            assert bool(isa & 16) == path.endswith(("+vnni", "+dotprod")), (path, isa)


def test_fma_paths_give_the_same_bits(results):
    fma = [p for p in results if p != "portable"]
    if len(fma) < 2:
        pytest.skip("fewer than two FMA paths run here (needs an x86-64-v3 CPU, or the aarch64 cross tools)")
    first = results[fma[0]]
    for path in fma[1:]:
        for name, values in first.items():
            if name == "isa" or name == "bf16-rows" and results[path]["isa"] != first["isa"] and (
                    int(first["isa"][0]) & 8 or int(results[path]["isa"][0]) & 8):  # vdpbf16ps: pairs
                continue
            assert results[path][name] == values, (path, name)


def test_every_path_is_within_fp32_rounding_of_the_portable_one(results):
    if "portable" not in results or len(results) < 2:
        pytest.skip("no second path to compare with")
    for path, result in results.items():
        for name, values in result.items():
            if name == "isa":
                continue
            want = results["portable"][name]
            scale = max(1.0, max(abs(v) for v in want))
            assert max(abs(a - b) for a, b in zip(values, want)) <= 2e-6 * scale * (1 + len(want) ** 0.5), (path, name)


@pytest.mark.skipif(not arm_paths(), reason="needs g++-aarch64-linux-gnu and qemu-user (.ci/run installs them)")
def test_arm64_builds_and_runs_under_qemu(results):
    assert int(results["neon+dotprod"]["isa"][0]) == 4 | 16 and int(results["neon"]["isa"][0]) == 4
    assert results["neon"]["argmax"] == [417.0]


@pytest.mark.skipif(not shutil.which("clang++"), reason="needs clang++ (.ci/run installs it)")
@pytest.mark.parametrize("target", [["-march=x86-64-v3"], ["-march=native"], ["-DGPT2_PORTABLE"],
                                    ["--target=aarch64-linux-gnu", "-mcpu=apple-m1"]])
def test_clang_builds_each_path_without_openmp(tmp_path, target):
    """As on macOS, whose clang has no OpenMP: the source compiles with clang on every path,
    Apple Silicon's (-mcpu=apple-m1: NEON with dotprod) included, its kernels single-threaded."""
    if "-march=native" in target and rowdot.native_isa() not in ("avx512", "avx2"):
        pytest.skip("not an x86-64 CPU")
    obj = tmp_path / "rowdot.o"
    run = subprocess.run(["clang++", "-O3", "-ffp-contract=off", "-std=c++17", "-fPIC", "-Werror=return-type", *target,
                          "-c", str(rowdot.SOURCE), "-o", str(obj)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert obj.stat().st_size > 0
