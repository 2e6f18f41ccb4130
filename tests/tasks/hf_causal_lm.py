"""A tiny GPT-2 (random initialisation) trained on the loss it computes from `labels` (TARGET_KEY)."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

TARGET_KEY = "labels"
METRIC_MODE = "min"


def build_model():
    config = GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 32, (n, 1), generator=g)
    ids = (start + torch.arange(12)) % 32  # counting sequences: the next token is predictable
    return [{"input_ids": row, "labels": row} for row in ids]


def train_dataset():
    return _data(64, 0)


def val_dataset():
    return _data(16, 1)


def metric(output, target):
    return output.loss.item()


def build_optimizer(params, lr):
    return torch.optim.AdamW(params, lr=lr)
