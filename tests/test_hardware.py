"""The one precision rule: bfloat16 only where the device computes it natively."""

from __future__ import annotations

import pytest
import torch

from fgsn import hardware as H
from fgsn.errors import InputError
from fgsn.models.loading import resolve_dtype
from fgsn.organism.recipe import OrganismRecipe

EPYC_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sse sse2 ssse3 fma sse4_1 sse4_2 avx avx2 avx512f avx512bw"
SAPPHIRE_FLAGS = EPYC_FLAGS + " avx512_bf16 amx_bf16 amx_tile amx_int8"


@pytest.fixture
def fake_cpu(tmp_path, monkeypatch):
    """Point the detection at a fake /proc/cpuinfo with the given flags line."""
    monkeypatch.delenv(H.ENV_OVERRIDE, raising=False)

    def use(flags: str | None) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text("processor\t: 0\nmodel name\t: fake\n" + (f"flags\t\t: {flags}\n" if flags else ""))
        monkeypatch.setattr(H, "CPUINFO", str(path))

    return use


def test_cpu_without_bf16_gets_float32_everywhere(fake_cpu):
    fake_cpu(EPYC_FLAGS)
    assert "avx2" in H.cpu_flags() and not H.cpu_has_native_bf16()
    assert H.fast_precision("cpu") == "float32"
    assert resolve_dtype("fast", "cpu") == torch.float32
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert OrganismRecipe().autocast_bf16() is False
    assert OrganismRecipe().resolved_dump()["bf16_autocast"] is False


def test_cpu_with_avx512_bf16_or_amx_gets_bfloat16_where_asked(fake_cpu):
    for extra in ("avx512_bf16", "amx_bf16"):
        fake_cpu(EPYC_FLAGS + " " + extra)
        assert H.cpu_has_native_bf16() and H.fast_precision("cpu") == "bfloat16"
        assert resolve_dtype("fast", "cpu") == torch.bfloat16
        assert resolve_dtype("auto", "cpu") == torch.float32  # auto never depends on the CPU model
        assert OrganismRecipe().autocast_bf16() is True


def test_unreadable_cpuinfo_means_no_native_bf16(fake_cpu, monkeypatch):
    fake_cpu(None)
    assert H.cpu_flags() == frozenset() and not H.cpu_has_native_bf16()
    monkeypatch.setattr(H, "CPUINFO", "/nonexistent/cpuinfo")
    assert not H.cpu_has_native_bf16()


def test_explicit_recipe_value_wins_over_the_hardware(fake_cpu):
    fake_cpu(EPYC_FLAGS)
    assert OrganismRecipe(bf16_autocast=True).autocast_bf16() is True
    fake_cpu(SAPPHIRE_FLAGS)
    assert OrganismRecipe(bf16_autocast=False).autocast_bf16() is False


def test_resolved_precision_separates_cache_entries(fake_cpu):
    """Two builds that differ in the resolved precision never share a cache entry; an `auto`
    recipe shares one with the explicit value it resolves to."""
    fake_cpu(EPYC_FLAGS)
    cpu_fp32 = OrganismRecipe()
    assert cpu_fp32.short_hash() == OrganismRecipe(bf16_autocast=False).short_hash()
    fp32_hash, fp32_key = cpu_fp32.short_hash(), cpu_fp32.aligned_key()
    fake_cpu(SAPPHIRE_FLAGS)
    assert OrganismRecipe().short_hash() == OrganismRecipe(bf16_autocast=True).short_hash()
    assert OrganismRecipe().short_hash() != fp32_hash
    assert OrganismRecipe().aligned_key() != fp32_key


def test_env_override_forces_the_rule(fake_cpu, monkeypatch):
    fake_cpu(SAPPHIRE_FLAGS)
    monkeypatch.setenv(H.ENV_OVERRIDE, "0")
    assert not H.cpu_has_native_bf16() and resolve_dtype("fast", "cpu") == torch.float32
    fake_cpu(EPYC_FLAGS)
    monkeypatch.setenv(H.ENV_OVERRIDE, "1")
    assert H.cpu_has_native_bf16()
    monkeypatch.setenv(H.ENV_OVERRIDE, "maybe")
    with pytest.raises(InputError, match="FGSN_NATIVE_BF16"):
        H.cpu_has_native_bf16()


def test_cuda_without_a_gpu_is_not_native(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not H.native_bf16("cuda") and not H.native_bf16("mps")
    assert resolve_dtype("auto", "cuda") == torch.float32


def test_cuda_with_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert H.native_bf16("cuda:0") and resolve_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert resolve_dtype("fast", "cuda") == torch.float32


def test_organism_build_resolves_auto_against_its_device(monkeypatch):
    """A GPU build of an `auto` recipe on a CPU without bf16 trains with bf16 autocast and is
    cached under the bf16 hash, not the CPU's float32 one."""
    from fgsn.organism import build as B

    monkeypatch.setenv(H.ENV_OVERRIDE, "0")
    monkeypatch.setattr(H, "native_bf16", lambda device: device.startswith("cuda"))
    seen = {}

    def stop(paths, recipe, stages):
        seen["hash"], seen["autocast"] = paths.recipe_hash, recipe.autocast_bf16()
        return True  # "complete": nothing is built

    monkeypatch.setattr(B, "is_complete", stop)
    monkeypatch.setattr("fgsn.models.loading.resolve_device", lambda d: d)
    B.build_organism(OrganismRecipe(), device="cuda")
    assert seen == {"hash": OrganismRecipe(bf16_autocast=True).short_hash(), "autocast": True}
    B.build_organism(OrganismRecipe(), device="cpu")
    assert seen == {"hash": OrganismRecipe(bf16_autocast=False).short_hash(), "autocast": False}
