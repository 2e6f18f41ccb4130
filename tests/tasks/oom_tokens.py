"""Variable-length sequences padded per batch; "runs out of memory" when a batch holds more than
BATCHTUNE_TEST_OOM_TOKENS padded tokens (batch x longest sequence). One item in 64 is ten times longer than
the rest, so random batches seldom hold it: only the batch of the longest items tells what fits."""

import os

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

LONG_ITEM = 37


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8, padding_idx=0)
        self.head = nn.Linear(8, 2)
        self.limit = int(os.environ.get("BATCHTUNE_TEST_OOM_TOKENS", "1000000"))

    def forward(self, tokens):
        if self.training and tokens.numel() > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory: {tokens.numel()} padded tokens")
        return self.head(self.embed(tokens).mean(1))


def build_model():
    return Bag()


class Sequences(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            tokens = torch.randint(1, 20, (40 if i == LONG_ITEM else 4,), generator=g)
            self.items.append((tokens, int(tokens[0] > 10)))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate_fn(items):
    return pad_sequence([t for t, _ in items], batch_first=True), torch.tensor([y for _, y in items])


def train_dataset():
    return Sequences(64, 0)


def val_dataset():
    return Sequences(16, 1)
