"""A Hugging Face text classifier: a tiny BERT (random initialisation) on generated token sequences.

Items are dicts, as Hugging Face datasets and tokenizers give them (input_ids, attention_mask,
labels). TARGET_KEY names the target. BertForSequenceClassification.forward takes `labels`, so
batchtune passes them on and trains on the loss the model computes; the default metric, accuracy,
reads the `logits` of its SequenceClassifierOutput. Needs `pip install transformers`; nothing is
downloaded.

    batchtune search examples/hf_text_classifier.py --trials 10 --epochs 2 --batch-size-max 64
"""

import torch
from transformers import BertConfig, BertForSequenceClassification

TARGET_KEY = "labels"
VOCAB, LENGTH = 100, 16


def build_model():
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=LENGTH, num_labels=2)
    return BertForSequenceClassification(config)


class TokenSequences(torch.utils.data.Dataset):
    """Padded token sequences; the label says whether most tokens come from the upper half of the vocabulary."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(LENGTH // 2, LENGTH + 1, (n,), generator=g)
        self.mask = (torch.arange(LENGTH) < lengths[:, None]).long()
        self.ids = torch.randint(1, VOCAB, (n, LENGTH), generator=g) * self.mask  # 0 pads
        self.labels = ((self.ids >= VOCAB // 2).sum(1) * 2 > lengths).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def train_dataset():
    return TokenSequences(512, seed=0)


def val_dataset():
    return TokenSequences(128, seed=1)


def build_optimizer(params, lr):
    return torch.optim.AdamW(params, lr=lr)
