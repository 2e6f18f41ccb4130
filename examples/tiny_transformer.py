"""A small transformer encoder on generated token sequences, with dict inputs and AdamW.

The label of a sequence is which of the tokens 1-4 occurs most often in it, so the model has to
attend over the whole sequence. The data are generated from a fixed seed (no download).
Run:
    batchtune search examples/tiny_transformer.py --trials 12 --lr-min 1e-4 --lr-max 1e-2
"""

import torch
from torch import nn
from torch.utils.data import Dataset

VOCAB = 16
SEQ_LEN = 24
CLASSES = 4


class TokenCounting(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, VOCAB, (n, SEQ_LEN), generator=g)
        counts = torch.stack([(self.tokens == c + 1).sum(dim=1) for c in range(CLASSES)], dim=1)
        # Ties broken towards the lower class id, deterministically.
        self.labels = counts.argmax(dim=1)
        self.mask = torch.ones(n, SEQ_LEN, dtype=torch.bool)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"tokens": self.tokens[i], "mask": self.mask[i]}, self.labels[i]


class Classifier(nn.Module):
    def __init__(self, dim=64, heads=4, layers=2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos = nn.Parameter(torch.zeros(SEQ_LEN, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, tokens, mask):
        h = self.encoder(self.embed(tokens) + self.pos, src_key_padding_mask=~mask)
        return self.head(h.mean(dim=1))


def build_model():
    return Classifier()


def train_dataset():
    return TokenCounting(4096, seed=0)


def val_dataset():
    return TokenCounting(1024, seed=1)


def build_optimizer(params, lr):
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
