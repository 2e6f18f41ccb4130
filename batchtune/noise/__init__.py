"""The gradient noise scale of a task and the goodput it implies (McCandlish et al. 2018; Pollux).

- ``measure``: run_noise and the gradient-norm measurement.
- ``goodput``: statistical efficiency and goodput of a batch size.
- ``report``: the markdown section, the plot and noise.json.
"""

from __future__ import annotations

from batchtune._lazy import attach

__all__ = ["NoiseConfig", "NoiseReport", "goodput_curve", "run_noise"]

__getattr__, __dir__ = attach(__name__, {
    "NoiseConfig": "batchtune.noise.measure",
    "NoiseReport": "batchtune.noise.measure",
    "goodput_curve": "batchtune.noise.goodput",
    "run_noise": "batchtune.noise.measure",
})
