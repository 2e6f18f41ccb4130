"""Hugging Face `datasets` items (dicts with a "label" column) into a tiny BERT, without a wrapper."""

import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification

TARGET_KEY = "label"


def build_model():
    return BertForSequenceClassification(BertConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=8, num_labels=3))


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 32, (n, 8), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist(), "label": (ids[:, 0] % 3).tolist()}).with_format("torch")


def train_dataset():
    return _data(64, 0)


def val_dataset():
    return _data(16, 1)
