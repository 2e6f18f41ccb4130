"""How many batch sizes the probe measures to find the largest that fits, against the issue's bound and
against Lightning's ``Tuner.scale_batch_size`` modes.

No model is trained: a size "fits" when it is at most a synthetic maximum, so this counts the
search's measurements only. The probe's own search (batchtune.probing.measure.SizeSearch) is the code that runs.

Lightning's loops are simulated from lightning/pytorch/tuner/batch_size_scaling.py (2.x):
``_run_power_scaling`` doubles until the first OOM, then halves once and stops (so it returns a power
of two times the initial size, not the maximum); ``_run_binary_scaling`` doubles until the first OOM,
then bisects with ``midval = (high + low) // 2`` until ``high - low <= 1``. Both stop after
``max_trials`` (25) runs. Every run is one measured size.

Run: PYTHONPATH=. python benchmarks/probe_sizes.py
"""

from __future__ import annotations

from tabulate import tabulate

from batchtune.probing.measure import SizeSearch, size_bound

MAX_TRIALS = 25  # Lightning's default


def ours(maximum: int, low: int, granularity: int, ceiling: int = 10**9) -> tuple[int | None, list[int]]:
    search = SizeSearch(low, ceiling, granularity)
    while (size := search.next_size()) is not None:
        search.record(size, size <= maximum)
    return search.fit, search.measured


def lightning_power(maximum: int, init: int) -> tuple[int, int]:
    new_size, runs, any_success = init, 0, False
    for _ in range(MAX_TRIALS):
        runs += 1
        if new_size <= maximum:
            new_size *= 2
            any_success = True
        else:
            new_size = max(1, new_size // 2)
            if any_success:
                break
    return new_size, runs


def lightning_binsearch(maximum: int, init: int) -> tuple[int, int]:
    low, high, new_size, runs, count = 1, None, init, 0, 0
    while True:
        runs += 1
        if new_size <= maximum:
            count += 1
            if count > MAX_TRIALS:
                break
            low = new_size
            if high:
                if high - low <= 1:
                    break
                new_size = (high + low) // 2
            else:
                new_size *= 2
        else:
            high = new_size
            new_size = (high + low) // 2
            if high - low <= 1:
                break
    return new_size, runs


def main() -> None:
    maxima = [37, 100, 255, 256, 300, 777, 1000, 1024, 1500, 3000, 5000, 12345]
    for low in (2, 8):
        rows = []
        worst_literal = 0
        for m in maxima:
            row: dict[str, object] = {"max": m}
            for g in (1, 8):
                fit, measured = ours(m, low, g)
                doubled = measured.index(next(b for b in measured if b > m))
                first_fail, last_fit = measured[doubled], measured[doubled - 1]
                gap = first_fail - last_fit
                bound = size_bound(first_fail, low, gap, g)
                literal = size_bound(fit or low, low, gap, g)  # "max" read as the largest size that fits
                worst_literal = max(worst_literal, len(measured) - literal)
                row[f"ours g={g}: found"] = fit
                row[f"g={g} sizes"] = len(measured)
                row[f"g={g} bound"] = bound if literal == bound else f"{bound} ({literal})"
            p_found, p_runs = lightning_power(m, low)
            b_found, b_runs = lightning_binsearch(m, low)
            row["power: found"] = p_found
            row["power sizes"] = p_runs
            row["binsearch: found"] = b_found
            row["binsearch sizes"] = b_runs
            rows.append(row)
        print(f"\nstarting size {low} (Lightning's init_val {low}); bound = ceil(log2(max/min)) + "
              "ceil(log2(gap/granularity)) + 1 with max = the first size that failed while doubling")
        print(tabulate(rows, headers="keys", tablefmt="github"))
        print(f"bound in parentheses: the same formula with max = the largest size that fits; it is exceeded "
              f"by at most {worst_literal} (only when the maximum is min x a power of two: doubling must "
              f"measure the next power to learn it fails)")
        assert all(r["g=1 sizes"] <= int(str(r["g=1 bound"]).split()[0]) for r in rows)
        assert all(r["ours g=1: found"] == r["max"] for r in rows)


if __name__ == "__main__":
    main()
