"""Fidelity of generation: perplexity on the bundled evaluation text and greedy next-token agreement with fp32.

Both come from one teacher-forced pass over fixed windows of the evaluation text: the mean negative log-likelihood
of each next token (perplexity = its exponential) and the argmax at every position (the token greedy decoding
would pick there), compared with the fp32 reference's argmax at the same positions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from engine.generation.prompts import TokenSource

WINDOW = 128
WINDOWS = 8


def eval_windows(source: TokenSource, max_positions: int | None) -> np.ndarray:
    """Fixed, non-overlapping windows of the evaluation text: up to WINDOWS of min(WINDOW, the model's positions)
    tokens, as many as the text holds without repeating itself (one shorter window when it holds less than one)."""
    length = min(WINDOW, max_positions or WINDOW, int(source.ids.size))
    count = max(1, min(WINDOWS, int(source.ids.size) // length))
    return np.stack([source.take(length, i * length) for i in range(count)])


def evaluate(model: Any, windows: np.ndarray, device: str) -> tuple[float, np.ndarray]:
    """Perplexity over every next-token prediction of the windows, and the argmax ids [windows, length - 1]."""
    import torch

    ids = torch.from_numpy(windows).to(device)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return math.exp(float(nll.mean())), logits.argmax(-1).cpu().numpy()


def agreement(argmax: np.ndarray, reference: np.ndarray) -> float:
    return float((argmax == reference).mean())


def from_logits(logits: np.ndarray, windows: np.ndarray) -> tuple[float, np.ndarray]:
    """evaluate() from logits a runtime computed outside torch ([windows, length, vocab] for the windows' ids)."""
    shifted = logits[:, :-1].astype(np.float64)
    logp = shifted - shifted.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, windows[:, 1:, None], axis=-1)[..., 0]
    return math.exp(float(nll.mean())), shifted.argmax(-1)
