"""A resume may add trials, never change what a trial means (batchtune.study.resume)."""

from __future__ import annotations

import optuna
import pytest

from batchtune.errors import UsageError
from batchtune.study.config import SearchConfig
from batchtune.study.resume import FINGERPRINT_KEY, check_resume, fingerprint


@pytest.fixture
def task(tmp_path):
    path = tmp_path / "model.py"
    path.write_text("# a task file\n")
    return path


def study():
    return optuna.create_study(study_name="s", directions=["maximize", "maximize", "minimize"])


def fp(task, mode="max", family="sgd", **cfg):
    cfg.setdefault("objective", "pareto")
    return fingerprint(SearchConfig(task_path=str(task), **cfg), metric_mode=mode, optimizer_family=family)


def test_first_run_stores_the_fingerprint_and_the_same_options_resume(task):
    s = study()
    check_resume(s, fp(task, epochs=6.0))
    assert s.user_attrs[FINGERPRINT_KEY]["epochs"] == 6.0
    assert len(s.user_attrs[FINGERPRINT_KEY]["task_sha256"]) == 64
    check_resume(s, fp(task, epochs=6.0))


@pytest.mark.parametrize(
    "changed, message",
    [
        ({"mode": "min"}, r"was created with metric_mode 'max' \(the task's METRIC_MODE\), not 'min'"),
        ({"epochs": 1.0}, r"was created with --epochs 6, not 1; run with --epochs 6 to resume it, or pass a new --study name"),
        ({"epochs": None, "budget_samples": 5000}, r"was created with --epochs 6, not none"),
        ({"family": "adaptive"}, r"was created with optimizer family 'sgd' \(the task's build_optimizer\), not 'adaptive'"),
        ({"precisions": ("fp32", "bf16")}, r"was created with --precisions fp32, not fp32,bf16"),
        ({"objective": "time-to-target", "target": 0.9}, r"was created with --objective pareto, not time-to-target"),
    ],
)
def test_a_resume_that_changes_a_trial_s_meaning_is_refused(task, changed, message):
    s = study()
    check_resume(s, fp(task, epochs=6.0))
    options = {"epochs": 6.0, **changed}
    mode, family = options.pop("mode", "max"), options.pop("family", "sgd")
    with pytest.raises(UsageError, match=message):
        check_resume(s, fp(task, mode=mode, family=family, **options))


def test_another_task_file_is_refused(task, tmp_path):
    s = study()
    check_resume(s, fp(task))
    other = tmp_path / "other.py"
    other.write_text("# another task file\n")
    with pytest.raises(UsageError, match=r"study 's' was created with another task file \(sha256 [0-9a-f]{12}, this one"):
        check_resume(s, fp(other))


def test_a_study_stored_before_fingerprints_is_checked_against_its_meta(task):
    s = study()
    s.set_user_attr("batchtune_meta", {"metric_mode": "min", "optimizer_family": "sgd", "epochs": 6.0,
                                       "budget_samples": None})
    s.set_user_attr("batchtune_space", {"precisions": ["fp32"], "objective": "pareto"})
    with pytest.raises(UsageError, match=r"metric_mode 'min'"):
        check_resume(s, fp(task, epochs=6.0))
    check_resume(s, fp(task, mode="min", epochs=6.0))
    assert s.user_attrs[FINGERPRINT_KEY]["metric_mode"] == "min"
