"""The choices every command shares: normalizations a task can be built with, and precisions."""

from __future__ import annotations

NORM_CHOICES = ("batch", "group", "layer", "none")
AS_BUILT = "as-built"  # a model with neither a norm argument nor BatchNorm layers is searched as it is built
PRECISIONS = ("fp32", "bf16", "fp16")
