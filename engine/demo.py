"""The bundled demo: a small CNN trained offline on scikit-learn's digits, saved as a torch.export program.

Built deterministically on first use under the data folder, with train/calib/eval splits in an .npz.
Imports torch: callers import this module lazily.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from storage.paths import sub_dir

DEMO_VERSION = 1
MODEL_FILE = "digits_cnn.pt2"
DATA_FILE = "digits.npz"
SEED = 0
EPOCHS = 30
CALIB_SAMPLES = 128


def demo_paths() -> tuple[Path, Path]:
    folder = sub_dir("demo", f"v{DEMO_VERSION}")
    return folder / MODEL_FILE, folder / DATA_FILE


def build_demo(force: bool = False) -> tuple[Path, Path, dict[str, float]]:
    """The demo model and data files, built once; returns their paths and the training report."""
    model_path, data_path = demo_paths()
    report_path = model_path.with_name("report.json")
    if model_path.is_file() and data_path.is_file() and report_path.is_file() and not force:
        return model_path, data_path, json.loads(report_path.read_text())
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]  # [N, 1, 8, 8] in [0, 1]
    y = digits.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    mean, std = float(x_train.mean()), float(x_train.std())
    x_train = (x_train - mean) / std
    x_eval = (x_eval - mean) / std

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: bitwise-identical training on every machine
    torch.manual_seed(SEED)
    try:
        model = DigitsCNN()
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=4e-3, total_steps=EPOCHS * 23)
        xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
        generator = torch.Generator().manual_seed(SEED)
        model.train()
        for _ in range(EPOCHS):
            order = torch.randperm(len(xt), generator=generator)
            for i in range(0, len(order), 64):
                idx = order[i:i + 64]
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
                loss.backward()
                optimizer.step()
                if scheduler.last_epoch < scheduler.total_steps - 1:
                    scheduler.step()
        model.eval()
        with torch.no_grad():
            accuracy = float((model(torch.from_numpy(x_eval)).argmax(1).numpy() == y_eval).mean())
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(model, (torch.from_numpy(x_eval[:4]),), dynamic_shapes=({0: batch},))
    finally:
        torch.set_num_threads(threads)
    torch.export.save(program, str(model_path))
    np.savez(
        data_path,
        **{"train/x": x_train, "train/labels": y_train, "calib/x": x_train[:CALIB_SAMPLES],
           "eval/x": x_eval, "eval/labels": y_eval},
    )
    report = {"eval_top1": accuracy, "train_samples": len(x_train), "eval_samples": len(x_eval)}
    report_path.write_text(json.dumps(report))
    return model_path, data_path, report


class DigitsCNN(nn.Module):
    """Three conv blocks and a two-layer head for 8x8 digit images."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128 * 2 * 2, 256), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # type: ignore[no-any-return]
