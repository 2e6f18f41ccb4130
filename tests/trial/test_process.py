"""TrialRunner.call: a measurement function run in the worker on the loaded task."""

from __future__ import annotations

from batchtune.trial.process import TrialRunner


def test_call_runs_in_the_child_with_the_workers_pythonpath(tasks, tmp_path):
    # The module exists only under the worker's PYTHONPATH, so the call proves both the call path
    # and that the worker's PYTHONPATH decides imports (bench --against-env relies on it).
    (tmp_path / "bt_probe_module.py").write_text(
        "import os\n"
        "def where(task, train_set, val_set, *, tag):\n"
        "    return {'file': __file__, 'pid': os.getpid(), 'tag': tag, 'train': len(train_set)}\n"
        "def broken(task, train_set, val_set):\n"
        "    raise RuntimeError('measurement failed\\nsecond line')\n"
    )
    with TrialRunner(str(tasks / "tiny_mlp.py"), env={"PYTHONPATH": str(tmp_path)}) as runner:
        out = runner.call_task("bt_probe_module:where", {"tag": "x"}, timeout=120)
        assert out["file"].startswith(str(tmp_path)) and out["tag"] == "x" and out["train"] == 512
        assert out["pid"] == runner.pid
        failed = runner.call_task("bt_probe_module:broken", {}, timeout=120)
        assert failed == {"error": "RuntimeError: measurement failed"}
        assert runner.alive()  # a failed call does not cost the worker


def test_dataloader_workers_run_inside_a_trial_worker(tasks, tmp_path):
    from batchtune.trial.train import TrialSpec

    source = (tasks / "lstm_varlen.py").read_text().replace('{"num_workers": 0}', '{"num_workers": 1}')
    (tmp_path / "lstm_workers.py").write_text(source)
    with TrialRunner(str(tmp_path / "lstm_workers.py")) as runner:
        result = runner.run(TrialSpec(batch_size=8, lr=0.01, norm="as-built", epochs=1, threads=1))
    assert result.status == "ok", result.reason  # not "daemonic processes are not allowed to have children"


def test_a_running_trial_reports_its_progress_about_once_a_second(tasks, tmp_path):
    from batchtune.trial.train import TrialSpec

    seen: list[tuple[int, int]] = []
    # The "slow" fault sleeps 0.3 s in every training step: 12 steps are over 3.6 s of training on any
    # CPU (a fast, idle machine trained 1,600 steps of tiny_mlp in under a second, and nothing came).
    env = {"BATCHTUNE_TEST_FAULT": "slow", "BATCHTUNE_TEST_FAULT_ALWAYS": "1", "BATCHTUNE_TEST_FAULT_DIR": str(tmp_path)}
    spec = TrialSpec(batch_size=16, lr=0.01, norm="as-built", epochs=None, budget_samples=16 * 12, threads=1)
    with TrialRunner(str(tasks / "faulty.py"), env=env) as runner:
        result = runner.run(spec, on_progress=lambda step, total: seen.append((step, total)))
    assert result.status == "ok", result.reason
    assert seen and all(total == 12 for _, total in seen)
    steps = [step for step, _ in seen]
    assert steps == sorted(steps) and 0 < steps[0] and steps[-1] < 12
    # About once a second: no more messages than seconds of training, give or take the first.
    assert len(seen) <= result.train_time + 2, (len(seen), result.train_time)
