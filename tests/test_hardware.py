"""What the benchmark says about the machine it ran on."""

from __future__ import annotations

import os

from core.hardware import cpu_description

AMX = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile
"""
EPYC = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse2 fma avx avx2
"""


def test_cpu_description_names_the_widest_unit():
    cores = os.cpu_count()
    assert cpu_description(AMX) == f"Intel(R) Xeon(R) Platinum 8480+, {cores} cores, AMX-BF16"
    assert cpu_description(EPYC) == f"AMD EPYC, {cores} cores, AVX2"
    assert cpu_description("") == f"unknown CPU, {cores} cores, no AVX2"


def test_cpu_description_of_this_machine_is_one_line():
    text = cpu_description()
    assert "\n" not in text and "cores" in text
