"""The task-file template written by ``batchtune init``."""

TEMPLATE = '''"""A batchtune task file: batchtune imports it and calls the functions below.

No import of batchtune is needed. Run: batchtune search THIS_FILE.py
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset

# Optional settings.
METRIC_MODE = "max"  # "max": higher metric is better (accuracy); "min": lower is better (error, loss)
# NORMS = ["batch", "group"]  # restrict the normalization choices searched
# TARGET_KEY = "label"  # items are dicts (Hugging Face datasets): the key of the target
# DATALOADER = {"num_workers": 2}  # DataLoader settings; batchtune sets batch size and shuffling


def _norm(kind, channels):
    # Called by build_model: one place that maps the searched value to a layer.
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "group":
        return nn.GroupNorm(4, channels)
    if kind == "layer":
        return nn.LayerNorm(channels)
    return nn.Identity()


def build_model(norm="batch"):
    """Required. Return a fresh torch.nn.Module. Called once per trial.

    Take a `norm` argument to build each normalization yourself (batch, group, layer, none);
    without it batchtune converts the model's BatchNorm layers for you.
    """
    return nn.Sequential(nn.Linear(20, 64), _norm(norm, 64), nn.ReLU(), nn.Linear(64, 3))


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    y = (x[:, :3].argmax(dim=1))
    return TensorDataset(x, y)


def train_dataset():
    """Required. A map-style Dataset whose items are (input, target).

    input: a tensor (called as model(x)), a tuple of tensors (model(*x)) or a dict (model(**x)).
    """
    return _data(2048, seed=0)


def val_dataset():
    """Required. Same item format as train_dataset."""
    return _data(512, seed=1)


# Optional: the loss (default: cross-entropy). Must return a scalar tensor.
def loss_fn(output, target):
    return nn.functional.cross_entropy(output, target)


# Optional: the metric of one batch (default: top-1 accuracy). The validation metric is the
# sample-weighted mean over the validation set.
def metric(output, target):
    return (output.argmax(dim=-1) == target).float().mean().item()


# Optional: make a batch of items yourself, e.g. pad sequences of different lengths.
# def collate_fn(items):
#     xs = torch.nn.utils.rnn.pad_sequence([x for x, _ in items], batch_first=True)
#     return xs, torch.tensor([y for _, y in items])


# Optional: the optimizer (default: SGD with momentum 0.9).
def build_optimizer(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.9)
'''
