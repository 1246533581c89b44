"""Fidelity of a variant's outputs to the fp32 reference, and the task metric when labels exist."""

from __future__ import annotations

from typing import Any

import numpy as np


def fidelity(reference: list[np.ndarray], outputs: list[np.ndarray],
             attention_mask: np.ndarray | None = None) -> dict[str, Any]:
    """max_abs, mean_abs, cosine (mean over samples), top1_agreement for classifier logits, and pooled_cosine
    for encoders (a first output of hidden states [N, S, H] and an [N, S] attention mask)."""
    if len(reference) != len(outputs):
        raise ValueError(f"the variant returns {len(outputs)} outputs, the reference {len(reference)}")
    max_abs = 0.0
    abs_sum = 0.0
    count = 0
    for ref, out in zip(reference, outputs, strict=True):
        if ref.shape != out.shape:
            raise ValueError(f"output shape {out.shape} differs from the reference {ref.shape}")
        diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
        if diff.size:
            # np.max, not max(): a NaN output must not read as a perfect max_abs of 0
            max_abs = float(np.max([max_abs, diff.max()]))
            abs_sum += float(diff.sum())
            count += diff.size
    n = reference[0].shape[0] if reference[0].ndim else 1
    flat_ref = np.concatenate([r.reshape(n, -1).astype(np.float64) for r in reference], axis=1)
    flat_out = np.concatenate([o.reshape(n, -1).astype(np.float64) for o in outputs], axis=1)
    num = (flat_ref * flat_out).sum(axis=1)
    den = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_out, axis=1)
    both_zero = den == 0
    cos = np.where(both_zero, 1.0, num / np.where(both_zero, 1.0, den))
    primary_ref, primary_out = reference[0], outputs[0]
    top1 = None
    if is_classifier(primary_ref):
        top1 = float((primary_ref.argmax(axis=1) == primary_out.argmax(axis=1)).mean())
    return {
        "max_abs": max_abs,
        "mean_abs": abs_sum / count if count else 0.0,
        "cosine": float(cos.mean()),
        "top1_agreement": top1,
        "pooled_cosine": pooled_cosine(primary_ref, primary_out, attention_mask),
    }


def pooled_cosine(reference: np.ndarray, output: np.ndarray, attention_mask: np.ndarray | None) -> float | None:
    """Cosine of the mask-weighted mean-pooled embeddings (a sentence encoder's output), mean over samples.

    The flat cosine compares every position's hidden state, padding included, which no one reads; a sentence
    embedding averages the attended positions. None unless `reference` is [N, S, H] floats and the mask [N, S].
    """
    if (attention_mask is None or reference.ndim != 3 or reference.dtype.kind != "f"
            or attention_mask.shape != reference.shape[:2] or output.shape != reference.shape):
        return None
    weights = attention_mask.astype(np.float64)[:, :, None]
    count = np.maximum(weights.sum(axis=1), 1.0)  # a row with no attended token pools to zeros, not NaN
    ref = (reference.astype(np.float64) * weights).sum(axis=1) / count
    out = (output.astype(np.float64) * weights).sum(axis=1) / count
    num = (ref * out).sum(axis=1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    both_zero = den == 0
    return float(np.where(both_zero, 1.0, num / np.where(both_zero, 1.0, den)).mean())


def is_classifier(output: np.ndarray) -> bool:
    """[N, C] float logits with more than one class."""
    return output.ndim == 2 and output.shape[1] > 1 and output.dtype.kind == "f"


def task_metric(outputs: list[np.ndarray], labels: np.ndarray | None) -> dict[str, Any] | None:
    """Top-1 accuracy of classifier logits against integer labels; None when it does not apply."""
    if labels is None or not outputs or not is_classifier(outputs[0]):
        return None
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.shape[0] != outputs[0].shape[0]:
        return None
    return {"name": "top1", "value": float((outputs[0].argmax(axis=1) == labels).mean())}
