"""vlrouting.machine: the CPU / thread / kernel-library record stored in results.json and printed by the demo."""

from __future__ import annotations

import json
import os
import socket

import torch

from vlrouting.machine import machine_info, machine_line, read_cpuinfo, torch_build

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7763 64-Core Processor
stepping\t: 1
flags\t\t: fpu avx avx2

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7763 64-Core Processor
"""

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
CPU implementer\t: 0x41
CPU variant\t: 0x0
CPU part\t: 0xd08
Hardware\t: BCM2835
"""

TORCH_CONFIG = """PyTorch built with:
  - GCC 13.3
  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for Intel(R) 64 architecture
  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71049cd69a3df32adcccb623b12cd7baa22)
  - CPU capability usage: AVX2
  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, LAPACK_INFO=mkl, USE_MKL=ON,
"""


def test_read_cpuinfo_x86_and_arm():
    assert read_cpuinfo(X86_CPUINFO) == {"cpu_model": "AMD EPYC 7763 64-Core Processor",
                                         "cpu_id": "AuthenticAMD family 25 model 1 stepping 1"}
    # ARM: no "model name"; "processor" is a core index, "Hardware" names the chip.
    assert read_cpuinfo(ARM_CPUINFO) == {"cpu_model": "BCM2835", "cpu_id": "0x41 part 0xd08 variant 0x0"}


def test_torch_build_parses_blas_mkl_onednn():
    assert torch_build(TORCH_CONFIG) == {"blas": "mkl", "mkl": "2024.2", "onednn": "3.12.0"}
    other = "  - oneDNN v3.5.3 (Git Hash x)\n  - Build settings: BLAS_INFO=open, LAPACK_INFO=open,\n"
    assert torch_build(other) == {"blas": "open", "mkl": None, "onednn": "3.5.3"}


def test_machine_info_fields_follow_the_process():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        info = machine_info()
    finally:
        torch.set_num_threads(before)
    assert set(info) == {"cpu_model", "cpu_id", "arch", "logical_cores", "usable_cores", "torch_threads",
                         "torch_interop_threads", "cpu_capability", "blas", "mkl", "onednn", "torch", "gpu"}
    assert info["torch_threads"] == 1
    assert info["logical_cores"] == os.cpu_count() and 1 <= info["usable_cores"] <= os.cpu_count()
    assert info["torch"] == torch.__version__
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info == {**info, **torch_build()}
    host = socket.gethostname()
    assert len(host) < 4 or host not in json.dumps(info)  # nothing that identifies the host


def test_machine_line_exact():
    info = {"cpu_model": "AMD EPYC", "cpu_id": "AuthenticAMD family 25 model 1 stepping 1", "arch": "x86_64",
            "logical_cores": 2, "usable_cores": 2, "torch_threads": 2, "torch_interop_threads": 2,
            "cpu_capability": "AVX2", "blas": "mkl", "mkl": "2024.2", "onednn": "3.12.0", "torch": "2.13.0",
            "gpu": None}
    assert machine_line(info) == ("Machine: AMD EPYC (AuthenticAMD family 25 model 1 stepping 1, x86_64, 2 logical "
                                  "cores), torch 2.13.0 on 2 threads, AVX2 kernels, BLAS mkl 2024.2, oneDNN 3.12.0")
    info.update(torch_threads=1, usable_cores=1, gpu="NVIDIA H100", cpu_id=None, mkl=None, blas="open")
    assert machine_line(info) == ("Machine: AMD EPYC (x86_64, 2 logical cores, 1 usable), torch 2.13.0 on 1 thread, "
                                  "AVX2 kernels, BLAS open, oneDNN 3.12.0, GPU NVIDIA H100")
