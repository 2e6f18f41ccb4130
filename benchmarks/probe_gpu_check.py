"""The CUDA path of the probe, checked on a real GPU in one short run (about 2-4 minutes on an H100).

Prints, per precision (fp32, bf16, fp16): the real OOM size, the largest fit, the recommended maximum,
the knee, peak allocated vs reserved memory at the largest fit, whether allocated memory went back to
its pre-size level after every size (OOM ones included), throughput and MFU against the datasheet peak.

Run: PYTHONPATH=. python benchmarks/probe_gpu_check.py
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tabulate import tabulate

from batchtune.probing.measure import ProbeConfig, probe
from batchtune.units import format_bytes

TASK = Path(__file__).resolve().parent.parent / "tests" / "tasks" / "gpu_wide.py"


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs a GPU")
    start = time.perf_counter()
    result = probe(ProbeConfig(task_path=str(TASK), norms=("none",), precisions=("fp32", "bf16", "fp16"),
                               device="cuda", batch_size_min=512, granularity=256, time_cap=0.3))
    rows = []
    for c in result.curves:
        best = c.point(c.largest_fit)
        ooms = [p.batch_size for p in c.points if p.status == "oom"]
        growth = [(p.memory_after_bytes or 0) - (p.baseline_memory_bytes or 0) for p in c.points]
        rows.append({
            "precision": c.precision,
            "first OOM": min(ooms) if ooms else None,
            "largest fit": c.largest_fit,
            "recommended": c.recommended_max,
            "knee": c.knee,
            "allocated peak": format_bytes(best.peak_memory_bytes) if best else "",
            "reserved peak": format_bytes(best.reserved_bytes) if best else "",
            # Allocated after a size minus before it; cuBLAS workspaces may stay once (a few MiB), a leak grows.
            "max kept after a size": format_bytes(max(growth)),
            "kept after each size": ",".join(format_bytes(g) for g in growth),
            "samples/s": f"{best.throughput:,.0f}" if best and best.throughput else "",
            "MFU": f"{best.mfu:.1%}" if best and best.mfu else "",
            "peak source": c.peak_flops_source,
            "sizes": c.measured_sizes,
        })
    print(result.environment.get("device_name"), torch.__version__, f"{time.perf_counter() - start:.1f} s")
    print(tabulate(rows, headers="keys", tablefmt="github"))
    for c in result.curves:
        print(f"{c.label}: {c.stop_reason}")


if __name__ == "__main__":
    main()
