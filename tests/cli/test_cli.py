"""CLI behaviour: bad input exits non-zero with one line and no traceback; help stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def one_line_error(result, code):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    return lines[-1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size-min", "64", "--batch-size-max", "32"], "--batch-size-min 64 is above --batch-size-max 32"),
        (["--lr-min", "-1"], "--lr-min -1 must be a positive learning rate"),
        (["--lr-min", "0"], "--lr-min 0 must be a positive learning rate"),
        (["--norms", "batch,fancy"], "--norms: unknown normalization 'fancy'"),
        (["--device", "tpu"], "--device 'tpu' is not a device; use auto, cpu, cuda, cuda:N or mps"),
        (["--device", "cuda"], "--device cuda: CUDA is not available on this machine"),
        (["--memory-budget", "lots"], "--memory-budget 'lots' is not a memory size"),
        (["--tolerance", "150%"], "--tolerance '150%' is out of range"),
        (["--storage", "ftp://host/db"], "--storage 'ftp://host/db' has an unknown scheme 'ftp'"),
        (["--batch-sizes", "16,x"], "'16,x' is not a comma-separated list of integers"),
        (["--batch-sizes", "4096"], "--batch-sizes 4096 is larger than the training set (512 samples)"),
        # issue 14
        (["--seed", "-1"], "--seed -1 is out of range; use an integer from 0 to 4294967295"),
        (["--seed", "4294967296"], "--seed 4294967296 is out of range"),
        (["--trial-timeout", "nan"], "--trial-timeout nan must be a positive number of seconds"),
        (["--workers", "100000"], "--workers 100000 is more than 4 per CPU core"),
        (["--batch-sizes", "16,32", "--batch-size-min", "8"], "--batch-size-min does not apply with --batch-sizes"),
        (["--batch-sizes", "16,32", "--batch-size-max", "64"], "--batch-size-max does not apply with --batch-sizes"),
    ],
)
def test_bad_options(cli, tasks, args, message):
    result = cli("search", tasks / "tiny_mlp.py", "--trials", "1", *args)
    assert message in one_line_error(result, 2)


def test_storage_in_a_missing_folder_is_refused_not_created(cli, tasks, workdir):
    url = f"sqlite:///{workdir}/missing_dir/x.db"
    result = cli("search", tasks / "tiny_mlp.py", "--trials", "1", "--epochs", "0.2", "--threads", "1", "--no-probe",
                 "--no-doctor", "--no-plots", "--storage", url)
    assert f"--storage {url!r}: the folder {workdir}/missing_dir does not exist" in one_line_error(result, 2)
    assert not (workdir / "missing_dir").exists()
    # The default storage is the one whose folder batchtune creates.
    assert cli("search", tasks / "tiny_mlp.py", "--trials", "1", "--epochs", "0.2", "--threads", "1", "--no-probe",
               "--no-doctor", "--no-plots").exit_code == 0
    assert (workdir / "studies" / "tiny_mlp.db").exists()


def test_study_name_with_a_path_writes_nothing_outside(cli, tasks, workdir):
    (workdir / "inside").mkdir()
    result = cli("search", tasks / "tiny_mlp.py", "--trials", "1", "--study", "../../escaped", "--output", "inside/reports")
    assert "--study '../../escaped' is not a plain name (it contains '/')" in one_line_error(result, 2)
    assert not list(workdir.parent.glob("escaped*")) and not list(workdir.parent.parent.glob("escaped*"))
    probe = cli("probe", tasks / "tiny_mlp.py", "--name", "../escaped")
    assert "--name '../escaped' is not a plain name" in one_line_error(probe, 2)


@pytest.mark.parametrize("command", ["probe", "check", "noise", "bench"])
def test_bad_seed_in_every_command(cli, tasks, command):
    extra = ["--batch-size", "16"] if command == "bench" else []
    result = cli(command, tasks / "tiny_mlp.py", *extra, "--seed", "-1")
    assert "--seed -1 is out of range" in one_line_error(result, 2)


def test_bench_timeout_nan(cli, tasks):
    result = cli("bench", tasks / "tiny_mlp.py", "--batch-size", "16", "--timeout", "nan")
    assert "--timeout nan must be a positive number of seconds" in one_line_error(result, 2)


def test_bad_task_file_is_exit_2_without_traceback(cli, workdir):
    (workdir / "broken.py").write_text("def build_model(:\n")
    result = cli("search", "broken.py")
    assert "broken.py:1: syntax error" in one_line_error(result, 2)
    assert not (workdir / "studies").exists() or not any((workdir / "studies").iterdir())


def test_password_never_shown(cli, tasks):
    result = cli("search", tasks / "tiny_mlp.py", "--trials", "1",
                 "--storage", "postgresql://user:hunter2@127.0.0.1:1/nodb")
    assert result.exit_code != 0
    assert "hunter2" not in result.output and "***" in result.output


def test_init_writes_template_that_passes_the_dry_run(cli, workdir):
    result = cli("init", "mine.py")
    assert result.exit_code == 0, result.output
    from batchtune.task.contract import dry_run, load_task, search_norms

    task = load_task(workdir / "mine.py")
    dry_run(task, search_norms(task, None)[0])
    again = cli("init", "mine.py")
    assert "mine.py already exists" in one_line_error(again, 2)


def test_init_into_a_missing_folder(cli, workdir):
    result = cli("init", "missing/dir/model.py")
    assert "cannot write missing/dir/model.py: the folder missing/dir does not exist" in one_line_error(result, 2)
    assert not (workdir / "missing").exists()


def test_env_prints_facts(cli):
    result = cli("env", "--json")
    assert result.exit_code == 0
    facts = json.loads(result.stdout)
    assert facts["device"] == "cpu" and facts["torch"] and facts["optuna"] and facts["threads"] >= 1


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys; from batchtune.cli import cli; "
        "heavy = [m for m in ('torch', 'optuna', 'pandas', 'matplotlib', 'numpy', 'sqlalchemy') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "batchtune", "--version"], capture_output=True, text=True, check=True)
    assert "batchtune" in out.stdout


BROKEN_LOSS = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

def build_model():
    return nn.Linear(4, 2)

def train_dataset():
    return TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))

def val_dataset():
    return TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))

def loss_fn(output, target):
    return output.sum() + target  # not a scalar: fails on every batch
"""


def test_check_runs_the_dry_run_first(cli, workdir):
    (workdir / "task.py").write_text(BROKEN_LOSS)
    result = cli("check", "task.py")
    assert "loss_fn(output, target) returned (2,), not a scalar tensor" in one_line_error(result, 2)


def test_check_refuses_variable_length_data_without_collate_fn(cli, workdir):
    (workdir / "task.py").write_text(BROKEN_LOSS.replace(
        "TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))",
        "[(torch.ones(2 + i % 3), i % 2) for i in range(64)]").replace("nn.Linear(4, 2)", "nn.LazyLinear(2)"))
    result = cli("check", "task.py")
    assert "have inputs of different shapes" in one_line_error(result, 2)
    assert "define collate_fn(items)" in result.output


def test_json_on_stdout_stays_json_when_the_task_file_prints(tasks, workdir):
    """A task file that prints at import (in batchtune's process, its workers and the doctor's process) put its
    lines ahead of the JSON on stdout; they go to stderr while --json is on."""
    import json
    import subprocess
    import sys

    noisy = workdir / "noisy.py"
    noisy.write_text('print("loading my task")\n' + (tasks / "tiny_mlp.py").read_text()
                     .replace("def train_dataset():", 'def train_dataset():\n    print("building the training set")'))
    run = subprocess.run([sys.executable, "-m", "batchtune", "check", str(noisy), "--json"], capture_output=True,
                         text=True, cwd=workdir, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["findings"] is not None
    assert "loading my task" in run.stderr and "building the training set" in run.stderr
