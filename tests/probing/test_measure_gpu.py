"""The probe's CUDA path: a real OOM, recovery without leaked memory, reserved vs allocated, bf16/fp16.

Skipped without CUDA (the ``gpu`` marker); benchmarks/probe_gpu_check.py prints the same figures.
"""

from __future__ import annotations

import pytest

from batchtune.probing.measure import ProbeConfig, probe

pytestmark = pytest.mark.gpu


def test_cuda_probe_finds_a_real_oom_and_recovers(tasks):
    result = probe(ProbeConfig(task_path=str(tasks / "gpu_wide.py"), norms=("none",), precisions=("fp32", "bf16", "fp16"),
                               device="cuda", batch_size_min=512, granularity=256, time_cap=0.3))
    fits = {}
    for curve in result.curves:
        ooms = [p for p in curve.points if p.status == "oom"]
        assert ooms, f"{curve.label}: no real OOM ({curve.stop_reason})"
        assert curve.largest_fit is not None and all(p.batch_size > curve.largest_fit for p in ooms)
        for p in curve.points:
            # Recovery: after each size, OOM or not, allocated memory is back at its pre-size level, but for
            # cuBLAS/cuBLASLt workspaces, which the caching allocator keeps once a kernel first needs them.
            assert p.memory_after_bytes is not None
            assert p.memory_after_bytes - p.baseline_memory_bytes <= 64 * 2**20
            if p.fits:
                assert p.memory_kind == "cuda-allocated" and p.reserved_bytes >= p.peak_memory_bytes
                assert 0 < p.mfu < 1
        fits[curve.precision] = curve.largest_fit
    # Autocast keeps the wide activations in 16 bits, so more samples fit than in fp32.
    assert fits["bf16"] > fits["fp32"] and fits["fp16"] > fits["fp32"]
