"""A plain LSTM over token sequences of different lengths: collate_fn pads them and passes the lengths."""

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

DATALOADER = {"num_workers": 0}


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8, padding_idx=0)
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 2)

    def forward(self, tokens, lengths):
        packed = pack_padded_sequence(self.embed(tokens), lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.head(h[-1])


def build_model():
    return Classifier()


class Sequences(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            length = int(torch.randint(3, 12, (1,), generator=g))
            tokens = torch.randint(1, 20, (length,), generator=g)
            self.items.append((tokens, int(length > 7)))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate_fn(items):
    tokens = [t for t, _ in items]
    lengths = torch.tensor([len(t) for t in tokens])
    return (pad_sequence(tokens, batch_first=True), lengths), torch.tensor([y for _, y in items])


def train_dataset():
    return Sequences(64, 0)


def val_dataset():
    return Sequences(16, 1)
