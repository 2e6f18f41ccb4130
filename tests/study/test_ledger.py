"""The coordinator's lean ask/tell (batchtune.study.ledger) against a real SQLite study and Optuna's TPE."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from batchtune.study.config import SearchConfig
from batchtune.study.coordinator import claim, record, trial_space, trial_spec
from batchtune.study.results import counts, measurements
from batchtune.study.run import quiet_optuna, trial_plan
from batchtune.study.sampler import make_sampler
from batchtune.study.storage import open_storage
from batchtune.trial.train import TrialResult

SIZES = (16, 32, 64, 128)
NORMS = ("batch", "group")


@pytest.fixture
def setup(tmp_path):
    with quiet_optuna():
        storage = open_storage(f"sqlite:///{tmp_path}/ledger.db")
        study = optuna.create_study(
            study_name="ledger", storage=storage, directions=["maximize", "maximize", "minimize"],
            sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, n_startup_trials=4),
        )
        cfg = SearchConfig(task_path="x.py", memory_budget=2**30, lr_rule="none", objective="pareto", trials=10).validated()
        yield storage, study, cfg, trial_plan(cfg, SIZES, 1000, "sgd", "max")


def one_trial(study, cfg, plan, i, peak=2**28):
    trial = claim(study, cfg.trials, trial_space(cfg, plan, NORMS), study.get_trials(deepcopy=False))
    if trial is None:
        return None
    spec, base_lr = trial_spec(trial.params, cfg, plan, "cpu", 1)
    # A made-up but consistent landscape: the sampler should find that lr near 0.01 is best.
    metric = 1.0 - abs(spec.lr - 0.01)
    result = TrialResult(status="ok", throughput=1000.0 + i, final_metric=metric, best_metric=metric,
                         peak_memory_bytes=peak, step_times=[0.01] * 10, curve=[])
    record(study, trial, result, spec, cfg, plan, base_lr, "cpu")
    return trial


def test_lean_trials_are_complete_optuna_trials_and_tpe_learns_from_them(setup, monkeypatch):
    _, study, cfg, plan = setup
    independent = []
    sample_independent = study.sampler.sample_independent
    monkeypatch.setattr(study.sampler, "sample_independent",
                        lambda s, t, name, d: independent.append(name) or sample_independent(s, t, name, d))
    with quiet_optuna():
        for i in range(8):
            one_trial(study, cfg, plan, i, peak=2**31 if i == 0 else 2**28)
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(8))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert set(t.params) == {"batch_size", "lr", "norm"} and t.params["batch_size"] in SIZES
        assert t.distributions["lr"] == optuna.distributions.FloatDistribution(cfg.lr_min, cfg.lr_max, log=True)
        assert t.user_attrs["worker"]["pid"] > 0 and measurements(t)["status"] == "ok"
        assert len(t.values) == 3 and t.values[1] == measurements(t)["throughput"]
    # The memory constraint lands where Optuna reads it: 2 GiB is over the 1 GiB budget (violation 1.0);
    # 256 MiB is under it, and a trial without constraint values is feasible.
    assert trials[0].constraints == {"memory": pytest.approx(1.0)}
    assert trials[1].constraints == {}
    feasible = optuna.study._constrained_optimization._get_feasible_trials(trials)
    assert [t.number for t in feasible] == list(range(1, 8))
    assert "above the --memory-budget by 100.0%" in measurements(trials[0])["reason"]
    # The 4 start-up trials sample each parameter independently (at random); after them multivariate
    # TPE fits the finished trials and samples all three jointly. A stale view of the study (no
    # finished trials) would keep sampling independently.
    assert len(independent) == 4 * 3


def test_lean_trial_costs_far_fewer_statements_than_ask_and_tell(setup):
    storage, study, cfg, plan = setup
    statements = [0]

    def count(*_args, **_kwargs):
        statements[0] += 1

    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", count)
    with quiet_optuna():
        for i in range(6):
            one_trial(study, cfg, plan, i)
        lean = statements[0] / 6
        statements[0] = 0
        for _ in range(6):
            trial = study.ask()
            trial.set_user_attr("worker", {"pid": 1})
            for name, choices in (("batch_size", list(SIZES)), ("norm", list(NORMS))):
                trial.suggest_categorical(name, choices)
            trial.suggest_float("lr", cfg.lr_min, cfg.lr_max, log=True)
            # The same attributes as record(): the measurements and the readable figures for optuna-dashboard.
            for key in ("result", "outcome", "lr", "val_metric", "samples_per_s", "peak_memory_MiB", "train_seconds"):
                trial.set_user_attr(key, None)
            trial.set_constraint("memory", -0.5)  # batchtune stores only violations (see record)
            study.tell(trial, [0.9, 1000.0, 2.0**28])
        plain = statements[0] / 6
    # The figures benchmarks/coordinator_overhead.py prints: about 45 against about 100 (12 of the 45 store
    # the readable attributes, in the same transaction as the measurements).
    assert lean <= 48 and plain >= 1.8 * lean, (lean, plain)


def test_claims_past_the_total_are_surplus_and_enqueued_parameters_are_kept(setup):
    _, study, cfg, plan = setup
    study.enqueue_trial({"batch_size": 32, "lr": 0.02, "norm": "group"})
    with quiet_optuna():
        first = one_trial(study, cfg, plan, 0)
        assert first.params == {"batch_size": 32, "lr": 0.02, "norm": "group"}
        for i in range(1, cfg.trials):
            one_trial(study, cfg, plan, i)
        # A worker that read the study before the last trial finished, and thought one was left.
        assert claim(study, cfg.trials, trial_space(cfg, plan, NORMS), study.get_trials(deepcopy=False)[:-1]) is None
    last = study.get_trials()[-1]
    assert last.state == TrialState.FAIL and last.user_attrs["status"] == "surplus" and not counts(last)
    assert sum(counts(t) for t in study.get_trials()) == cfg.trials


def batchtune_study(storage, name="seeded", seed=0):
    """A study with batchtune's sampler, as one coordinator process opens it (storage.open_study)."""
    return optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(seed=seed, trials=10))


def drawn(study):
    return [tuple(sorted(t.params.items())) for t in study.get_trials() if counts(t)]


def test_a_fixed_seed_draws_the_same_configurations_in_a_fresh_study(setup, tmp_path):
    storage, _, cfg, plan = setup
    runs = []
    for name in ("one", "two"):
        optuna.create_study(study_name=name, storage=storage, directions=["maximize", "maximize", "minimize"])
        study = batchtune_study(storage, name)
        with quiet_optuna():
            for i in range(6):
                one_trial(study, cfg, plan, i)
        runs.append(drawn(study))
    assert runs[0] == runs[1] and len(set(runs[0])) == 6


def test_a_resume_and_a_second_process_draw_new_configurations(setup):
    # Issue 14 item 3: TPESampler(seed=--seed) in every process replayed the start-up draws.
    storage, _, cfg, plan = setup
    optuna.create_study(study_name="seeded", storage=storage, directions=["maximize", "maximize", "minimize"])
    with quiet_optuna():
        first = batchtune_study(storage)
        for i in range(2):
            one_trial(first, cfg, plan, i)
        resumed = batchtune_study(storage)  # a rerun: a new process, a new sampler
        for i in range(2, 4):
            one_trial(resumed, cfg, plan, i)
    assert len(set(drawn(resumed))) == 4


def test_workers_that_read_the_study_at_once_do_not_run_the_same_configuration(setup):
    storage, _, cfg, plan = setup
    optuna.create_study(study_name="seeded", storage=storage, directions=["maximize", "maximize", "minimize"])
    a, b = batchtune_study(storage), batchtune_study(storage)
    space = trial_space(cfg, plan, NORMS)
    with quiet_optuna():
        read = a.get_trials(deepcopy=False)  # both processes read the empty study, then both claim
        first = claim(a, cfg.trials, space, read)
        second = claim(b, cfg.trials, space, read)
    trials = a.get_trials()
    assert first.number == 0 and second.number == 2 and second.params != first.params
    copy = trials[1]
    assert copy.params == first.params and copy.state == TrialState.FAIL and not counts(copy)
    assert copy.user_attrs["status"] == "duplicate" and "drawn again" in copy.user_attrs["reason"]
