"""Every way a task file can be wrong gets a one-line error naming the file, the function and the fix."""

from __future__ import annotations

import textwrap

import pytest
import torch

from batchtune.errors import TaskError
from batchtune.task.contract import (
    AS_BUILT,
    dry_run,
    load_task,
    make_dataset,
    search_norms,
)

GOOD = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

def build_model(norm="batch"):
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8) if norm == "batch" else nn.Identity(), nn.Linear(8, 2))

def train_dataset():
    return TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))

def val_dataset():
    return TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
"""


def write(tmp_path, body, name="task.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def check(task_path, *, norms=("batch",)):
    task = load_task(task_path)
    dry_run(task, norms)
    return task


def test_good_file_loads(tmp_path):
    task = check(write(tmp_path, GOOD))
    assert task.takes_norm and task.metric_mode == "max" and not task.custom_loss


def test_missing_file(tmp_path):
    with pytest.raises(TaskError, match=r"nope\.py: no such task file; pass the path of a Python file"):
        load_task(tmp_path / "nope.py")


def test_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "import torch\n\ndef build_model(:\n    pass\n")
    with pytest.raises(TaskError, match=r"task\.py:3: syntax error: .*fix that line"):
        load_task(path)


def test_import_error(tmp_path):
    path = write(tmp_path, "import not_a_real_package_xyz\n" + GOOD)
    with pytest.raises(TaskError, match=r"import failed: ModuleNotFoundError: No module named 'not_a_real_package_xyz'; install"):
        load_task(path)


def test_module_level_exception_names_line(tmp_path):
    path = write(tmp_path, GOOD + "\nx = 1 / 0\n")
    with pytest.raises(TaskError, match=r"task\.py:\d+: running the file raised ZeroDivisionError"):
        load_task(path)


@pytest.mark.parametrize("missing", ["build_model", "train_dataset", "val_dataset"])
def test_missing_required_function(tmp_path, missing):
    body = GOOD.replace(f"def {missing}(", f"def _{missing}(")
    with pytest.raises(TaskError, match=rf"{missing}\(\) is missing; define `def {missing}"):
        load_task(write(tmp_path, body))


def test_model_of_wrong_type(tmp_path):
    body = GOOD.replace('def build_model(norm="batch"):\n    return', 'def build_model(norm="batch"):\n    return 3 or')
    with pytest.raises(TaskError, match=r"build_model\(\) returned a int, not a torch.nn.Module"):
        check(write(tmp_path, body))


def test_dataset_of_wrong_type(tmp_path):
    body = GOOD.replace("def train_dataset():\n    return", "def train_dataset():\n    return 5 or")
    with pytest.raises(TaskError, match=r"train_dataset\(\) returned a int, not a map-style dataset"):
        check(write(tmp_path, body))


def test_empty_dataset(tmp_path):
    body = GOOD.replace("torch.randn(8, 4), torch.randint(0, 2, (8,))", "torch.randn(0, 4), torch.randint(0, 2, (0,))")
    with pytest.raises(TaskError, match=r"val_dataset\(\) returned an empty dataset"):
        check(write(tmp_path, body))


def test_item_not_a_pair(tmp_path):
    body = GOOD.replace(
        "def train_dataset():\n    return TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))",
        "def train_dataset():\n    return TensorDataset(torch.randn(16, 4))",
    )
    with pytest.raises(TaskError, match=r"train_dataset\(\)\[0\] is a tuple of length 1, not an \(input, target\) pair"):
        check(write(tmp_path, body))


def test_output_does_not_fit_loss(tmp_path):
    body = GOOD.replace("nn.Linear(8, 2))", "nn.Linear(8, 2), nn.Flatten(0))")
    with pytest.raises(TaskError, match=r"loss_fn\(output, target\) raised .*; fix loss_fn"):
        check(write(tmp_path, body))


def test_loss_not_scalar(tmp_path):
    body = GOOD + "\ndef loss_fn(output, target):\n    return torch.nn.functional.cross_entropy(output, target, reduction='none')\n"
    with pytest.raises(TaskError, match=r"loss_fn\(output, target\) returned \(2,\), not a scalar tensor"):
        check(write(tmp_path, body))


def test_metric_not_a_number(tmp_path):
    body = GOOD + "\ndef metric(output, target):\n    return 'good'\n"
    with pytest.raises(TaskError, match=r"metric\(output, target\) returned a str, not a number"):
        check(write(tmp_path, body))


def test_optimizer_of_wrong_type(tmp_path):
    body = GOOD + "\ndef build_optimizer(params, lr):\n    return None or 'sgd'\n"
    with pytest.raises(TaskError, match=r"build_optimizer\(\) returned a str, not a torch.optim.Optimizer"):
        check(write(tmp_path, body))


def test_bad_metric_mode(tmp_path):
    with pytest.raises(TaskError, match=r'METRIC_MODE = \'up\' is not valid; set it to "max" or "min"'):
        load_task(write(tmp_path, GOOD + "\nMETRIC_MODE = 'up'\n"))


def test_dict_and_tuple_inputs(tmp_path):
    body = """
import torch
from torch import nn

class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 2)
    def forward(self, x, y):
        return self.a(x) + self.a(y)

class D(torch.utils.data.Dataset):
    def __len__(self):
        return 10
    def __getitem__(self, i):
        return {"x": torch.ones(3), "y": torch.zeros(3)}, i % 2

def build_model():
    return M()

def train_dataset():
    return D()

def val_dataset():
    return D()
"""
    task = load_task(write(tmp_path, body))
    norms, note = search_norms(task, None)
    assert norms == (AS_BUILT,) and "searched as built" in note
    dry_run(task, norms)
    assert len(make_dataset(task, "train")) == 10


def test_loading_does_not_touch_sys_path(tmp_path):
    import sys

    before = list(sys.path)
    load_task(write(tmp_path, GOOD))
    assert sys.path == before
    torch.manual_seed(0)


# ------------------------------------------------------------------ the norms a factory rejects (issue 13)


PARTIAL_NORMS = GOOD.replace(
    'def build_model(norm="batch"):\n    return',
    'def build_model(norm="batch"):\n    {"batch": 1, "layer": 2, "none": 3}[norm]\n    return',
)


def test_norms_the_factory_rejects_are_dropped_from_the_defaults(tmp_path, caplog):
    task = load_task(write(tmp_path, PARTIAL_NORMS))
    norms, note = search_norms(task, None)
    assert norms == ("batch", "layer", "none")
    assert "build_model rejects norm group (build_model(norm='group') raised KeyError: 'group')" in note
    assert any("rejects norm group" in r.getMessage() for r in caplog.records)


def test_a_named_norm_the_factory_rejects_is_still_an_error(tmp_path):
    task = load_task(write(tmp_path, PARTIAL_NORMS))
    norms, _ = search_norms(task, ["batch", "group"])
    with pytest.raises(TaskError, match=r"build_model\(norm='group'\) raised KeyError: 'group'; fix build_model"):
        dry_run(task, norms)


# ------------------------------------------------------------------ a task file that never finishes importing (14.11)


def test_import_that_loops_for_ever_gives_up_with_its_line(tmp_path, caplog):
    path = write(tmp_path, "import time\nx = 0\nwhile True:\n    x += 1\n")
    with pytest.raises(TaskError, match=r"task\.py:\d: importing the file did not finish within 1 s \(its module-level "
                                        r"code was running line \d\); module-level code must not loop or wait"):
        load_task(path, import_timeout=1)
    assert any("still importing" in r.getMessage() and "task.py" in r.getMessage() for r in caplog.records)


def test_import_that_sleeps_in_a_thread_gives_up(tmp_path):
    import threading

    path = write(tmp_path, "import time\nwhile True:\n    time.sleep(0.05)\n")
    caught = []

    def load():
        try:
            load_task(path, import_timeout=0.5)
        except TaskError as exc:
            caught.append(str(exc))

    thread = threading.Thread(target=load)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive() and "did not finish within 0.5 s" in caught[0]


def test_import_limit_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHTUNE_IMPORT_TIMEOUT", "0.5")
    with pytest.raises(TaskError, match=r"within 0.5 s"):
        load_task(write(tmp_path, "while True:\n    pass\n"))
