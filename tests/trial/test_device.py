"""CPU threads: a default that leaves busy cores alone, the load in the environment, a warning when busy."""

from __future__ import annotations

import os

import pytest

from batchtune.trial import device


@pytest.fixture
def machine(monkeypatch):
    def set_machine(cores, load):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))

    return set_machine


@pytest.mark.parametrize("cores, load, workers, threads", [
    (2, 0.1, 1, 2),   # idle: every core
    (8, 0.2, 2, 4),   # idle: cores split between the workers
    (2, 3.1, 1, 1),   # busier than its cores: one thread, not two that wait for each other
    (8, 4.0, 1, 4),   # half busy: the idle half
    (8, 7.0, 2, 1),   # at least one per worker
])
def test_default_threads_leave_busy_cores_alone(machine, cores, load, workers, threads):
    machine(cores, load)
    assert device.default_threads(workers) == threads


def test_busy_machine_warns_and_the_load_is_recorded(machine):
    import torch

    machine(2, 3.1)
    assert "busier than its cores (load average 3.10 on 2 cores): trials get 1 CPU thread(s) each" in (
        device.busy_machine(1) or "")
    env = device.environment(torch.device("cpu"), threads=1)
    assert env["load_average"] == [3.1, 3.1, 3.1] and env["cores_available"] == 2
    machine(2, 0.5)
    assert device.busy_machine(1) is None


def test_search_prints_the_warning(cli, tasks, machine):
    machine(2, 5.0)
    result = cli("search", tasks / "missing.py", "--trials", "1")  # valid options: warned, then stops at the file
    assert "warning: this machine is busier than its cores (load average 5.00 on 2 cores)" in result.output
