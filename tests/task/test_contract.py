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
    with pytest.raises(TaskError, match=r"loss_fn\(output, target\) raised .*; the default loss is cross-entropy of "
                       r"the logits \(Tensor \(4,\)\) against the target \(Tensor \(2,\)\): return logits of shape"):
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


# ------------------------------------------------------------------ outputs, targets and batches (issue 13, 14)

PAIRS = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

def build_model():
    return nn.Linear(4, 3)

def train_dataset():
    return TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,)))

def val_dataset():
    return TensorDataset(torch.randn(8, 4), torch.randint(0, 3, (8,)))
"""


def test_tuple_output_names_the_tuple_not_the_loss(tmp_path):
    body = PAIRS + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
    def forward(self, x):
        return self.a(x), x

def build_model():
    return M()

def loss_fn(output, target):
    return nn.functional.cross_entropy(output, target)
"""
    with pytest.raises(TaskError, match=r"the model output is a tuple \(Tensor \(2, 3\), Tensor \(2, 4\)\): return the "
                                        r"logits from forward, or take the part you need in loss_fn"):
        check(write(tmp_path, body), norms=(AS_BUILT,))


def test_tuple_output_of_two_shapes_is_ambiguous_with_the_default_loss(tmp_path):
    """(logits, input): which tensor holds the logits cannot be told from shapes; refused, not guessed."""
    body = PAIRS + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
    def forward(self, x):
        return self.a(x), x

def build_model():
    return M()
"""
    with pytest.raises(TaskError, match=r"define loss_fn\(output, target\) and metric\(output, target\) taking the part "
                                        r"that holds them \(e.g. output\[1\]\)"):
        check(write(tmp_path, body), norms=(AS_BUILT,))


def test_labels_out_of_range_are_named(tmp_path):
    body = PAIRS.replace("torch.randint(0, 3, (16,))", "torch.arange(16) % 5")
    with pytest.raises(TaskError, match=r"train_dataset\(\) has labels outside \[0, 3\): they range over \[0, 4\], "
                                        r"and the model outputs 3 values per sample; make it output 5"):
        check(write(tmp_path, body), norms=(AS_BUILT,))


def test_labels_out_of_range_with_a_custom_loss(tmp_path):
    body = PAIRS.replace("torch.randint(0, 3, (16,))", "torch.arange(16) + 3") + """
def loss_fn(output, target):
    return nn.functional.cross_entropy(output, target)
"""
    with pytest.raises(TaskError, match=r"raised IndexError: .*out of bounds.*; the labels are outside \[0, 3\)"):
        check(write(tmp_path, body), norms=(AS_BUILT,))


def test_inf_metric_is_refused(tmp_path):
    body = PAIRS + "\ndef metric(output, target):\n    return float('inf')\n"
    with pytest.raises(TaskError, match=r"metric\(output, target\) returned inf on a fresh model; return a finite number"):
        check(write(tmp_path, body), norms=(AS_BUILT,))


REGRESSION = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

METRIC_MODE = "min"

def build_model():
    return nn.Linear(4, 1)

def train_dataset():
    return TensorDataset(torch.randn(16, 4), torch.randn(16))

def val_dataset():
    return TensorDataset(torch.randn(8, 4), torch.randn(8))

def metric(output, target):
    return float((output.squeeze(-1) - target).abs().mean())
"""


def test_shapes_that_only_broadcast_are_refused(tmp_path):
    body = REGRESSION + "\ndef loss_fn(output, target):\n    return nn.functional.mse_loss(output, target)\n"
    with pytest.raises(TaskError, match=r"the model output \(2, 1\) and the target \(2,\) only agree by broadcasting "
                                        r"\(to \(2, 2\)\).*return output.squeeze\(-1\) from forward"):
        check(write(tmp_path, body), norms=(AS_BUILT,))


def test_hand_written_loss_that_broadcasts_is_refused(tmp_path):
    body = REGRESSION + "\ndef loss_fn(output, target):\n    return ((output - target) ** 2).mean()\n"
    with pytest.raises(TaskError, match=r"only agree by broadcasting"):
        check(write(tmp_path, body), norms=(AS_BUILT,))


def test_loss_that_squeezes_for_itself_is_accepted(tmp_path):
    body = REGRESSION + "\ndef loss_fn(output, target):\n    return nn.functional.mse_loss(output.squeeze(-1), target)\n"
    check(write(tmp_path, body), norms=(AS_BUILT,))


DICT_ITEMS = """
import torch
from torch import nn

class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 12
    def __getitem__(self, i):
        return {"x": torch.full((4,), float(i)), "label": torch.tensor(i % 2)}

class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 2)
    def forward(self, x):
        return {"logits": self.a(x)}

def build_model():
    return M()

def train_dataset():
    return Data()

def val_dataset():
    return Data()
"""


def test_dict_items_need_a_target_key(tmp_path):
    with pytest.raises(TaskError, match=r"train_dataset\(\)\[0\] is a dict with keys \['x', 'label'\], not an \(input, "
                                        r"target\) pair; set TARGET_KEY = 'label' in the task file"):
        load_and_make(write(tmp_path, DICT_ITEMS))


def test_dict_items_with_a_target_key_and_dict_output_train(tmp_path):
    task = check(write(tmp_path, DICT_ITEMS + "\nTARGET_KEY = 'label'\n"), norms=(AS_BUILT,))
    assert task.target_key == "label"


def test_target_reaches_a_model_whose_forward_names_it(tmp_path):
    body = DICT_ITEMS.replace("def forward(self, x):\n        return {\"logits\": self.a(x)}", """def forward(self, x, label=None):
        logits = self.a(x)
        return {"logits": logits, "loss": nn.functional.cross_entropy(logits, label) * 0 + 123.0}""")
    task = check(write(tmp_path, body + "\nTARGET_KEY = 'label'\n"), norms=(AS_BUILT,))
    from torch.utils.data import default_collate

    from batchtune.task.contract import build_model, default_loss, forward, split_batch

    inputs, target = split_batch(task, default_collate([make_dataset(task, "train")[i] for i in range(2)]))
    output = forward(build_model(task, AS_BUILT), inputs, task.target_key)
    assert default_loss(output, target).item() == 123.0  # the model's own loss, computed from the target


def test_python_lists_in_dict_items_name_with_format(tmp_path):
    body = DICT_ITEMS.replace('{"x": torch.full((4,), float(i)), "label": torch.tensor(i % 2)}',
                              '{"x": [float(i)] * 4, "label": i % 2}')
    with pytest.raises(TaskError, match=r"holds a list under 'x', not a tensor; call .with_format\(\"torch\"\)"):
        load_and_make(write(tmp_path, body + "\nTARGET_KEY = 'label'\n"))


VARLEN = """
import torch
from torch import nn

class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 12
    def __getitem__(self, i):
        return torch.ones(2 + i % 3), i % 2

class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(1, 2)
    def forward(self, x):
        return self.a(x.mean(1, keepdim=True))

def build_model():
    return M()

def train_dataset():
    return Data()

def val_dataset():
    return Data()
"""


def test_variable_length_without_collate_fn_names_the_fix(tmp_path):
    with pytest.raises(TaskError, match=r"items of train_dataset\(\) have inputs of different shapes \(\[2\] at entry 0 "
                                        r"and \[3\] at entry 1\).*define collate_fn\(items\) in the task file"):
        check(write(tmp_path, VARLEN), norms=(AS_BUILT,))


def test_variable_length_with_collate_fn_trains(tmp_path):
    body = VARLEN + """
def collate_fn(items):
    x = nn.utils.rnn.pad_sequence([x for x, _ in items], batch_first=True)
    return x, torch.tensor([y for _, y in items])
"""
    task = check(write(tmp_path, body), norms=(AS_BUILT,))
    from batchtune.trial.train import TrialSpec, run_trial

    result = run_trial(task, TrialSpec(batch_size=4, lr=0.01, norm=AS_BUILT, epochs=1, threads=1),
                       make_dataset(task, "train"), make_dataset(task, "val"))
    assert result.status == "ok", result.reason


def test_dataloader_settings_are_checked(tmp_path):
    with pytest.raises(TaskError, match=r"DATALOADER has 'batch_size': batchtune sets it per trial; allowed keys are"):
        load_task(write(tmp_path, GOOD + "\nDATALOADER = {'batch_size': 4}\n"))


def load_and_make(path):
    task = load_task(path)
    make_dataset(task, "train")
    return task


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


def test_loss_that_squeezes_dim_1_for_itself_is_accepted(tmp_path):
    # The broadcasting probe calls loss_fn with the output in the target's shape; a loss that takes only the
    # model's own shape (squeeze(1) of (B, 1)) fails there and is right as written.
    body = REGRESSION + "\ndef loss_fn(output, target):\n    return nn.functional.mse_loss(output.squeeze(1), target)\n"
    check(write(tmp_path, body), norms=(AS_BUILT,))


BINARY = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

def build_model():
    return nn.Linear(4, 1)

def train_dataset():
    return TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)).float())

def val_dataset():
    return TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)).float())

def loss_fn(output, target):
    return nn.functional.binary_cross_entropy_with_logits(output.squeeze(1), target)
"""


def test_one_logit_with_the_default_accuracy_is_refused(tmp_path):
    # argmax over one logit is always 0: every configuration would score the share of label 0.
    with pytest.raises(TaskError, match=r"one output per sample \(2, 1\); the default metric.*would score every "
                                        r"model alike; define metric\(output, target\)"):
        check(write(tmp_path, BINARY), norms=(AS_BUILT,))
    body = BINARY + "\ndef metric(output, target):\n    return ((output.reshape(-1) > 0).float() == target).float().mean().item()\n"
    check(write(tmp_path, body), norms=(AS_BUILT,))


def test_real_valued_targets_with_the_default_accuracy_are_refused(tmp_path):
    body = """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    def build_model():
        return nn.Linear(4, 3)

    def train_dataset():
        return TensorDataset(torch.randn(16, 4), torch.randn(16) + 0.5)

    def val_dataset():
        return TensorDataset(torch.randn(8, 4), torch.randn(8) + 0.5)

    def loss_fn(output, target):
        return nn.functional.mse_loss(output.mean(1), target)
    """
    with pytest.raises(TaskError, match=r"the targets are real numbers \(torch.float32.*compares class indices"):
        check(write(tmp_path, body), norms=(AS_BUILT,))


def test_class_probabilities_score_their_most_likely_class():
    from batchtune.task.contract import default_metric

    out = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    soft = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.2, 0.2]])
    assert default_metric(out, soft) == 0.5


NUMPY_ITEMS = """
import numpy as np
import torch
from torch import nn

class Data(torch.utils.data.Dataset):
    def __init__(self, n):
        self.x = np.random.RandomState(0).randn(n, 4).astype({dtype!r})
    def __len__(self):
        return len(self.x)
    def __getitem__(self, i):
        return self.x[i], int(i % 2)  # a NumPy array and a Python int, as a DataLoader's default_collate takes them

def build_model():
    return nn.Linear(4, 2)

def train_dataset():
    return Data(16)

def val_dataset():
    return Data(8)
"""


def test_numpy_items_are_batched_as_a_dataloader_does(tmp_path):
    check(write(tmp_path, NUMPY_ITEMS.format(dtype="float32")), norms=(AS_BUILT,))
    with pytest.raises(TaskError, match=r"train_dataset\(\)\[0\] has an input of type ndarray"):
        check(write(tmp_path, NUMPY_ITEMS.format(dtype="object")), norms=(AS_BUILT,))


def test_a_regression_on_the_default_loss_and_metric_names_both_fixes(tmp_path):
    # torch's cross_entropy takes a (B,) output and (B,) real targets as one sample's class probabilities: a
    # regression left on the defaults would train on a scalar that means nothing.
    body = """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    def build_model():
        return nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))

    def train_dataset():
        return TensorDataset(torch.randn(16, 4), torch.randn(16))

    def val_dataset():
        return TensorDataset(torch.randn(8, 4), torch.randn(8))
    """
    with pytest.raises(TaskError, match=r"one output per sample \(2,\).*the default loss, cross-entropy, needs one "
                                        r"logit per class too: define loss_fn"):
        check(write(tmp_path, body), norms=(AS_BUILT,))


MULTI_LABEL = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

def build_model():
    return nn.Linear(10, 4)

def _data(n):
    x = torch.randn(n, 10)
    return TensorDataset(x, {targets})

def train_dataset():
    return _data(16)

def val_dataset():
    return _data(8)

def loss_fn(output, target):
    return nn.functional.{loss}(output, target)
"""


def test_multi_hot_targets_with_the_default_accuracy_are_refused(tmp_path):
    multi_hot = MULTI_LABEL.format(targets="(x[:, :4] > 0).float()", loss="binary_cross_entropy_with_logits")
    with pytest.raises(TaskError, match=r"not class probabilities \(each sample's summing to 1\): real values or multi-hot "
                                        r"labels; the default metric, top-1 accuracy"):
        check(write(tmp_path, multi_hot), norms=(AS_BUILT,))
    # One-hot or smoothed class probabilities are what cross_entropy takes as soft targets: accepted.
    soft = MULTI_LABEL.format(targets="torch.softmax(x[:, :4], 1)", loss="cross_entropy")
    check(write(tmp_path, soft), norms=(AS_BUILT,))


TUPLE_OUTPUT = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        features = self.body(x)
        return {ret}

def build_model(norm="none"):
    return Net()

def train_dataset():
    return TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,)))

def val_dataset():
    return TensorDataset(torch.randn(8, 4), torch.randint(0, 3, (8,)))
{extra}
"""


def test_a_features_and_logits_tuple_is_refused_with_the_default_loss(tmp_path):
    """(features, logits): the default loss took the first tensor, the 16 features, as 16 class logits, and
    trained on them without a word."""
    both = TUPLE_OUTPUT.format(ret="features, self.head(features)", extra="")
    with pytest.raises(TaskError, match=r"different shapes \(output\[0\] \(2, 16\), output\[1\] \(2, 3\)\); the default "
                                        r"loss_fn and metric would take output\[0\] as the logits"):
        check(write(tmp_path, both), norms=("none",))
    only_metric = TUPLE_OUTPUT.format(ret="features, self.head(features)",
                                      extra="def loss_fn(output, target):\n    return nn.functional.cross_entropy(output[1], target)\n")
    with pytest.raises(TaskError, match=r"the default metric would take output\[0\] as the logits; return the logits alone "
                                        r"from forward, or define metric\(output, target\) taking"):
        check(write(tmp_path, only_metric), norms=("none",))
    # Logits beside auxiliary logits of the same shape (Inception's): the first is the main one, accepted.
    check(write(tmp_path, TUPLE_OUTPUT.format(ret="self.head(features), self.head(features) * 0.5", extra="")), norms=("none",))


AUTOENCODER = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

def build_model():
    return nn.Sequential(nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 8))

def _data(n):
    x = torch.rand(n, 8) * 16  # pixel intensities
    return TensorDataset(x, x)

def train_dataset():
    return _data(16)

def val_dataset():
    return _data(8)
{extra}
"""


def test_real_valued_targets_of_the_outputs_shape_need_a_loss(tmp_path):
    """An autoencoder's (x, x) pairs on the default loss: cross-entropy took the pixels as soft labels and
    trained without a word; the metric's error named only metric, and a metric alone still trained on it."""
    with pytest.raises(TaskError, match=r"the default loss, cross-entropy, would take as soft labels; define loss_fn\(output, "
                                        r"target\): `return nn.functional.mse_loss\(output, target\)`.*and metric"):
        check(write(tmp_path, AUTOENCODER.format(extra="")), norms=(AS_BUILT,))
    metric_only = AUTOENCODER.format(extra="METRIC_MODE = 'min'\ndef metric(output, target):\n"
                                           "    return nn.functional.mse_loss(output, target).item()\n")
    with pytest.raises(TaskError, match=r"multi-hot labels(?!.*and metric)"):
        check(write(tmp_path, metric_only), norms=(AS_BUILT,))
    both = metric_only + "def loss_fn(output, target):\n    return nn.functional.mse_loss(output, target)\n"
    check(write(tmp_path, both), norms=(AS_BUILT,))


def test_min_mode_on_the_default_accuracy_is_refused(tmp_path):
    """METRIC_MODE = "min" with no metric minimised the default accuracy: the least accurate configuration won."""
    with pytest.raises(TaskError, match=r'METRIC_MODE = "min" but no metric is defined: the default metric, top-1 '
                                        r"accuracy, is higher is better"):
        check(write(tmp_path, GOOD + '\nMETRIC_MODE = "min"\n'))


def test_a_near_miss_of_an_optional_name_is_refused(tmp_path):
    """optimizer(params, lr) instead of build_optimizer: never called, and SGD stood in silently."""
    misnamed = GOOD + "\ndef optimizer(params, lr):\n    return torch.optim.AdamW(params, lr=lr)\n"
    with pytest.raises(TaskError, match=r"optimizer\(\) is defined but batchtune reads `build_optimizer`"):
        load_task(write(tmp_path, misnamed))
    load_task(write(tmp_path, misnamed + "build_optimizer = optimizer\n"))  # both names: the right one is read
    criterion = GOOD + "\ncriterion = torch.nn.CrossEntropyLoss()\n"  # an object, not a function: no near miss
    load_task(write(tmp_path, criterion))


def test_a_model_with_nothing_to_train_is_named(tmp_path):
    """Every parameter frozen: the error blamed loss_fn, which the file does not define."""
    frozen = GOOD.replace('def build_model(norm="batch"):\n    return ',
                          'def build_model(norm="batch"):\n    return _freeze(') .replace(
        "nn.Linear(8, 2))", "nn.Linear(8, 2)))") + "\ndef _freeze(m):\n    m.requires_grad_(False)\n    return m\n"
    with pytest.raises(TaskError, match=r"build_model\(norm='batch'\) returned a model with no trainable parameter"):
        check(write(tmp_path, frozen))


def test_named_norms_a_model_cannot_take_are_refused(tmp_path):
    """--norms group on a model with no BatchNorm and no `norm` argument searched it as built, silently."""
    plain = """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    def build_model():
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def train_dataset():
        return TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))

    def val_dataset():
        return TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    """
    task = load_task(write(tmp_path, plain))
    with pytest.raises(TaskError, match=r"--norms names group, but the model has no BatchNorm layer to convert"):
        search_norms(task, ["group"])
    assert search_norms(task, None)[0] == (AS_BUILT,)
    task = load_task(write(tmp_path, plain.rstrip(' ') + '    NORMS = ["layer"]\n'))
    with pytest.raises(TaskError, match=r"NORMS names layer, .*drop NORMS"):
        search_norms(task, None)
