"""CPU class detection from /proc/cpuinfo text, kernel caps, and the bf16 decision."""

from __future__ import annotations

from pathlib import Path

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


def test_this_machines_cpuinfo_is_read_when_none_is_given():
    assert hardware.cpu_model() and isinstance(hardware.cpu_model(), str)
    assert isinstance(hardware.cpu_flags(), set)
    assert hardware.cpu_class(env={}) in hardware.CLASSES
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # Linux
        text = cpuinfo.read_text()
        assert hardware.cpu_model() == hardware.cpu_model(text)
        assert hardware.cpu_flags() == hardware.cpu_flags(text)


@pytest.mark.parametrize("processor, machine, model", [
    ("Intel64 Family 6", "x86_64", "Intel64 Family 6"),
    ("", "aarch64", "aarch64"),  # Linux on ARM: platform.processor() is empty
    ("", "", "unknown"),
])
def test_a_cpuinfo_without_a_model_name_falls_back_to_platform(monkeypatch, processor, machine, model):
    import platform

    monkeypatch.setattr(platform, "processor", lambda: processor)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert hardware.cpu_model("processor\t: 0\nflags\t: fpu\n") == model


def test_avx2_without_fma_is_not_the_avx2_class():
    assert hardware.cpu_class({"avx2"}, env={}) == "other"


@pytest.mark.parametrize("value, cls", [("AVX", "other"), ("SSE41", "other"), ("SSE4_2", "other"),
                                        ("AVX512_CORE_AMX", "amx"), ("", "amx")])
def test_kernel_caps_below_avx2_or_naming_amx(value, cls):
    assert hardware.cpu_class(AMX, env={"ONEDNN_MAX_CPU_ISA": value}) == cls


def test_amx_alone_counts_as_bf16_instructions():
    assert hardware.fast_bf16({"avx2", "fma", "avx512f", "amx_bf16"}, env={})


def test_use_bf16_auto_on_a_gpu_follows_the_gpu(monkeypatch):
    gpu = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert use_bf16("auto", gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert not use_bf16("auto", gpu)
    assert not use_bf16("auto", torch.device("mps"))  # fp32 where we have no measurements


# resolve_device and device_name on machines we may not have: torch's own availability
# functions stand in for the hardware.


@pytest.fixture
def machine(monkeypatch):
    def has(cuda=False, mps=False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    return has


@pytest.mark.parametrize("cuda, mps, device", [(True, True, "cuda"), (False, True, "mps"),
                                               (False, False, "cpu")])
def test_auto_picks_cuda_then_mps_then_cpu(machine, cuda, mps, device):
    machine(cuda=cuda, mps=mps)
    assert hardware.resolve_device("auto") == torch.device(device)


def test_a_named_device_is_used_when_the_machine_has_it(machine):
    machine(cuda=True, mps=True)
    for name in ("cpu", "cuda", "mps"):
        assert hardware.resolve_device(name) == torch.device(name)


@pytest.mark.parametrize("name, message", [
    ("cuda", "--device cuda was asked for, but no CUDA GPU is available: use --device cpu."),
    ("mps", "--device mps was asked for, but MPS is not available: use --device cpu."),
])
def test_a_missing_device_is_one_sentence_naming_the_way_out(machine, name, message):
    from fmnist.errors import ConfigError

    machine()
    with pytest.raises(ConfigError) as caught:
        hardware.resolve_device(name)
    assert str(caught.value) == message


def test_device_name_says_what_a_runs_speed_compares_with(monkeypatch):
    cards = {0: "NVIDIA A100-SXM4-40GB", 1: "NVIDIA H100 80GB HBM3"}
    monkeypatch.setattr(torch.cuda, "get_device_name",
                        lambda device=None: cards[getattr(device, "index", None) or 0])
    assert hardware.device_name(torch.device("cuda", 1)) == "NVIDIA H100 80GB HBM3"  # not the first
    assert hardware.device_name(torch.device("cpu")) == f"{hardware.cpu_model()} ({hardware.cpu_class()})"
    assert hardware.device_name(torch.device("mps")) == "mps"
