"""The mixed-precision choice: what `--mixed-precision auto` picks on this CPU, and what bfloat16 costs without it.

bfloat16 (Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning Training") keeps float32's
8-bit exponent, so it trains without loss scaling; it pays only where the hardware multiplies
bfloat16 natively: x86 AVX512_BF16 (``vdpbf16ps``, twice the float32 dot-product rate: Cooper Lake,
Sapphire Rapids and later Xeons, AMD Zen 4 and Zen 5) and AMX-BF16 (Sapphire Rapids and later), or
Arm's BF16 extension. TensorFlow's oneDNN kernels then run the convolutions in bfloat16; elsewhere
they convert in software and a bfloat16 step is slower than a float32 one.

Linux only: the flags come from ``/proc/cpuinfo``; other systems report none, so ``auto`` keeps float32.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

# /proc/cpuinfo flag -> what it is called in the vendors' manuals.
BF16_FLAGS = {"avx512_bf16": "AVX512_BF16", "amx_bf16": "AMX-BF16", "bf16": "Arm BF16"}
# The precision names of `config.PRECISIONS`, plus the choice this module resolves.
AUTO = "auto"
# Measured here (AMD Zen 5, 2 cores) with oneDNN held to an ISA without bfloat16 instructions,
# `ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI python scripts/bf16_peers.py --models resnet20 --contenders
# ours_fp32,ours_bf16`: ResNet-20's bfloat16 step ran at 0.54x the float32 one. On a real AVX2-only CPU
# (AMD Zen 3, 2 cores, 2026-12-02, the same command with `--rounds 2 --steps 5`) oneDNN has no bfloat16
# kernels, TensorFlow falls back to Eigen, and the step ran at 0.077x (18.2 against 234.7 images/s).
EMULATED_BF16_COST = (
    "a ResNet-20 bfloat16 training step ran at 0.54x the float32 speed on AVX-512 without BF16, and at "
    "0.077x (13 times slower) on an AVX2-only CPU, where oneDNN has no bfloat16 kernels"
)


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    """A resolved precision: `name` is a key of `config.PRECISIONS`; `note` says why (for the log),
    and `warning` is set when the choice is likely slower than float32 on this CPU."""

    name: str
    note: str
    warning: str | None = None


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (x86 ``flags``, Arm ``Features``); `cpuinfo` is its
    text (tests pass a fake one). An empty set when there is no /proc/cpuinfo (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def native_bfloat16(cpuinfo: str | None = None) -> list[str]:
    """The bfloat16 instruction sets this CPU reports (e.g. ["AVX512_BF16", "AMX-BF16"]); empty: none."""
    flags = cpu_flags(cpuinfo)
    return [name for flag, name in BF16_FLAGS.items() if flag in flags]


def resolve(precision: str, cpuinfo: str | None = None) -> PrecisionChoice:
    """`precision` ("auto", "none", "float16" or "bfloat16") as a concrete choice with its reason.

    "auto" is bfloat16 where the CPU computes it natively, else "none" (float32). An explicit
    "bfloat16" on a CPU without it is kept, with a warning of its cost. Other names pass through.
    """
    native = native_bfloat16(cpuinfo)
    found = " and ".join(native)
    if precision == AUTO:
        if native:
            return PrecisionChoice("bfloat16", f"mixed precision auto: bfloat16 (this CPU has {found})")
        return PrecisionChoice(
            "none", "mixed precision auto: float32 (no AVX512_BF16, AMX-BF16 or Arm BF16 in /proc/cpuinfo)"
        )
    if precision == "bfloat16" and not native:
        return PrecisionChoice(
            "bfloat16",
            "mixed precision: bfloat16",
            warning=(
                "this CPU reports no native bfloat16 (AVX512_BF16, AMX-BF16, Arm BF16), so bfloat16 is "
                f"emulated and slower than float32: {EMULATED_BF16_COST}. Use --mixed-precision none or auto."
            ),
        )
    return PrecisionChoice(precision, f"mixed precision: {precision}" + (f" ({found})" if native else ""))
