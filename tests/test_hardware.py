"""What the benchmark says about the machine it ran on."""

from __future__ import annotations

import os

import pytest

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


@pytest.mark.parametrize(("gpu", "bf16_cpu", "export", "measured", "expected"), [
    (True, False, False, None, True),  # a GPU: bf16
    (False, False, True, "bfloat16", False),  # no bf16 math: float32, nothing measured
    (False, True, True, "bfloat16", True),  # bf16 math, measured faster here
    (False, True, True, "float32", False),  # bf16 math, but measured slower here (Xeon without AMX)
    (False, True, False, None, True),  # bf16 math, no export to measure with: bf16
])
def test_bf16_policy_follows_the_measurement_on_bf16_cpus(monkeypatch, gpu, bf16_cpu, export, measured, expected):
    import tensorflow as tf

    import core.hardware
    import core.models
    from core.models import bf16_policy_available

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"] if gpu else [])
    monkeypatch.setattr(core.hardware, "cpu_supports_bf16", lambda: bf16_cpu)
    monkeypatch.setattr(core.models, "usable_export", lambda path: ({"runtime": "openvino"}, "") if export
                        else (None, "no export"))

    def measure(path):
        assert measured is not None, "measured although it should not have"
        return measured

    monkeypatch.setattr(core.models, "measured_precision", measure)
    assert bf16_policy_available() is expected
