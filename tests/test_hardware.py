"""CPU class detection from /proc/cpuinfo text, kernel caps, and the bf16 decision."""

from __future__ import annotations

import pytest
import torch

from fmnist import hardware
from fmnist.hardware import use_bf16

AMX = {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
ZEN4 = {"avx2", "fma", "avx512f", "avx512_bf16"}
SKYLAKE = {"avx2", "fma", "avx512f"}
ZEN3 = {"avx2", "fma"}
OLD = {"sse4_2", "avx"}


def test_model_and_flags_from_cpuinfo_text():
    text = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2 fma\n"
    assert hardware.cpu_model(text) == "AMD EPYC 7B13"
    assert hardware.cpu_flags(text) == {"fpu", "avx2", "fma"}
    assert hardware.cpu_flags("") == set()  # not Linux: no flags, class "other"


@pytest.mark.parametrize("flags, cls", [(AMX, "amx"), (ZEN4, "avx512"), (SKYLAKE, "avx512"),
                                        (ZEN3, "avx2"), (OLD, "other"), (set(), "other")])
def test_classes(flags, cls):
    assert hardware.cpu_class(flags, env={}) == cls


def test_kernel_caps_lower_the_class_and_never_raise_it():
    capped = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
              "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    assert hardware.cpu_class(AMX, env=capped) == "avx2"
    assert hardware.cpu_class(AMX, env={"ATEN_CPU_CAPABILITY": "avx2"}) == "avx2"
    assert hardware.cpu_class(AMX, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}) == "avx512"
    assert hardware.cpu_class(ZEN3, env={"ATEN_CPU_CAPABILITY": "avx512"}) == "avx2"
    assert hardware.cpu_class(AMX, env={"ATEN_CPU_CAPABILITY": "default"}) == "other"
    assert hardware.cpu_class(AMX, env={"ONEDNN_MAX_CPU_ISA": "ALL"}) == "amx"


def test_bf16_only_where_the_cpu_has_bf16_instructions():
    assert hardware.fast_bf16(AMX, env={})
    assert hardware.fast_bf16(ZEN4, env={})
    for flags in (SKYLAKE, ZEN3, OLD, set()):  # emulated or unknown: fp32
        assert not hardware.fast_bf16(flags, env={})
    assert not hardware.fast_bf16(AMX, env={"ONEDNN_MAX_CPU_ISA": "AVX2"})  # capped: emulated


def test_use_bf16_auto_follows_the_cpu_and_explicit_settings_win(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(hardware, "cpu_flags", lambda cpuinfo=None: set())  # unknown CPU
    assert not use_bf16("auto", cpu)
    assert use_bf16("on", cpu) and not use_bf16("off", cpu)
    monkeypatch.setattr(hardware, "cpu_flags", lambda cpuinfo=None: set(AMX))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    assert use_bf16("auto", cpu)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert not use_bf16("auto", cpu)
