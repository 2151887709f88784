"""What kind of CPU this is, for the measured speed rules (attention path, `dtype: auto`).

The rules themselves take the facts as arguments (so tests can map flag sets to choices without the
hardware); `host_cpu()` reads them once from this machine: torch's dispatch capability, the vendor and the
feature flags of /proc/cpuinfo (Linux; elsewhere the vendor and flags are empty and every rule takes its
conservative branch)."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HostCPU:
    capability: str = "DEFAULT"      # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT", ...
    vendor: str = ""                 # /proc/cpuinfo vendor_id: "GenuineIntel", "AuthenticAMD", ...
    family: int | None = None        # /proc/cpuinfo "cpu family"
    flags: frozenset = field(default_factory=frozenset)
    amx: bool = False                # AMX tiles usable, as torch's dispatcher sees it

    @property
    def avx512(self) -> bool:
        return self.capability == "AVX512"

    @property
    def avx512_bf16(self) -> bool:
        """bf16 dot-product instructions (vdpbf16ps) on the AVX-512 units (Intel Cooper Lake and later, AMD Zen 4
        and later); AMX is a separate, wider path."""
        return self.avx512 and "avx512_bf16" in self.flags

    def describe(self) -> str:
        kind = "AMX" if self.amx else "AVX-512 BF16" if self.avx512_bf16 else self.capability
        return f"{self.vendor or 'unknown vendor'} {kind}"


def parse_cpuinfo(text: str) -> tuple[str, int | None, frozenset]:
    """(vendor, family, flags) of the first processor in /proc/cpuinfo's text."""
    vendor, family, flags = "", None, frozenset()
    for line in text.splitlines():
        if not line.strip():
            if vendor or flags:
                break  # end of the first processor's block
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "vendor_id":
            vendor = value
        elif key == "cpu family" and value.isdigit():
            family = int(value)
        elif key == "flags":
            flags = frozenset(value.split())
    return vendor, family, flags


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, int | None, frozenset]:
    try:
        with open("/proc/cpuinfo") as f:
            return parse_cpuinfo(f.read())
    except OSError:
        return "", None, frozenset()


def host_cpu() -> HostCPU:
    """This machine (the /proc/cpuinfo part read once; torch's capability and AMX probe asked each time, so
    ATEN_CPU_CAPABILITY and tests that patch torch are seen)."""
    import torch

    vendor, family, flags = _cpuinfo()
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return HostCPU(capability=torch.backends.cpu.get_cpu_capability(), vendor=vendor, family=family, flags=flags,
                   amx=bool(probe()) if probe is not None else False)
