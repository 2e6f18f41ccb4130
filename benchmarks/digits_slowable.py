"""examples/digits_cnn.py with knobs that slow training down, for benchmarks/bench_gate.py.

BATCHTUNE_TEST_SLOWDOWN=0.15 with BATCHTUNE_TEST_SLOWDOWN_KIND=compute|stall|data|memory injects a
15% slowdown of that kind (see tests/tasks/slowable_mlp.py, whose Slowed wrapper and collate this
reuses); the file itself never changes. Batches go through ``collate`` (a DataLoader) for every kind,
so the data path the ``data`` kind stalls is the same with the knob off.
"""

import importlib.util
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_digits = _load("_bench_digits_cnn", _ROOT / "examples" / "digits_cnn.py")
_slow = _load("_bench_slowable", _ROOT / "tests" / "tasks" / "slowable_mlp.py")

train_dataset = _digits.train_dataset
val_dataset = _digits.val_dataset
collate_fn = _slow.collate


def build_model(norm="batch"):
    return _slow.Slowed(_digits.build_model(norm), _slow.SLOWDOWN)
