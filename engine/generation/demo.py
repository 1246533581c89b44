"""The generation demo: a small Llama-style decoder trained here, offline, on the Python standard library's own
docstrings (a text every installation carries), saved as a zipped Hugging Face folder with its byte-level BPE
tokenizer. About a minute on two cores the first time; cached in the data folder afterwards."""

from __future__ import annotations

import importlib
import json
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

from engine.executors.tasks import ProgressFn, task
from storage.paths import sub_dir

DEMO_VERSION = 1
SEED = 0
VOCAB = 1024
SEQ_LEN = 128
BATCH = 16
STEPS = 300
# sizes of the decoder: about 0.7 million parameters
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 128, 2, 4, 2, 384
# Modules whose docstrings are the training text: the same on every machine with the same Python.
_MODULES = ("argparse", "ast", "asyncio", "bisect", "calendar", "collections", "configparser", "contextlib", "csv",
            "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum", "fractions", "functools",
            "gzip", "heapq", "html.parser", "http.client", "ipaddress", "itertools", "json", "logging", "mailbox",
            "numbers", "optparse", "os", "pathlib", "pprint", "queue", "random", "re", "shlex", "shutil",
            "smtplib", "socket", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap",
            "threading", "timeit", "tokenize", "traceback", "typing", "unittest", "uuid", "zipfile")
ZIP_NAME = "demo-decoder.zip"


def training_text() -> str:
    """The docstrings of the modules above and of their public classes and functions, in a fixed order."""
    parts: list[str] = []
    for name in _MODULES:
        module = importlib.import_module(name)
        parts.append(module.__doc__ or "")
        for attr in sorted(dir(module)):
            obj = getattr(module, attr, None)
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str):
                parts.append(doc)
    return "\n\n".join(p.strip() for p in parts if p and p.strip())


def demo_folder() -> Path:
    return sub_dir("demo") / f"decoder-v{DEMO_VERSION}"


def build_generation_demo(steps: int = STEPS, force: bool = False) -> tuple[Path, dict[str, Any]]:
    """The demo decoder's zip (built once) and its training report."""
    folder = demo_folder()
    archive, report_path = folder / ZIP_NAME, folder / "report.json"
    if archive.is_file() and report_path.is_file() and not force:
        report = json.loads(report_path.read_text())
        if report.get("steps") == steps:
            return archive, report
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from engine.generation.prompts import EVAL_TEXT, bundled_text

    text = training_text()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=FFN,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         max_position_embeddings=512, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                         tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same weights on every machine
    torch.manual_seed(SEED)
    start = time.perf_counter()
    try:
        model = LlamaForCausalLM(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=max(steps, 2))
        generator = torch.Generator().manual_seed(SEED)
        model.train()
        for _ in range(steps):
            starts = torch.randint(0, len(ids) - SEQ_LEN - 1, (BATCH,), generator=generator)
            batch = torch.stack([ids[s:s + SEQ_LEN] for s in starts.tolist()])
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        evaluation = torch.tensor(tokenizer(bundled_text(EVAL_TEXT), add_special_tokens=False)["input_ids"])
        windows = evaluation[: len(evaluation) // SEQ_LEN * SEQ_LEN].view(-1, SEQ_LEN)
        with torch.no_grad():
            eval_loss = float(model(input_ids=windows, labels=windows).loss)
    finally:
        torch.set_num_threads(threads)
    staging = folder.with_name(folder.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    hf = staging / "demo-decoder"
    model.save_pretrained(hf, safe_serialization=True)
    tokenizer.save_pretrained(hf)
    with zipfile.ZipFile(staging / ZIP_NAME, "w", zipfile.ZIP_DEFLATED) as out:
        for path in sorted(hf.iterdir()):
            out.write(path, f"demo-decoder/{path.name}")
    report = {"parameters": sum(p.numel() for p in model.parameters()), "steps": steps,
              "train_loss": float(loss.detach()), "eval_perplexity": float(torch.tensor(eval_loss).exp()),
              "train_s": time.perf_counter() - start, "train_tokens": len(ids)}
    (staging / "report.json").write_text(json.dumps(report, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder / ZIP_NAME, report


@task("demo-generate")
def _build_task(payload: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    from engine.artifacts import intake

    archive, report = build_generation_demo()
    return {"artifact": intake(archive).to_json(), "report": report}


DEMO_VARIANTS = ("baseline", "int8-dynamic", "int8-weight-only", "bf16")
DEMO_BUILD_TIMEOUT_S = 600.0


def start_generation_demo(created_by: str | None = None) -> tuple[int, dict[str, Any]]:
    """Build the demo decoder in a child process (trained the first time) and queue its generation study."""
    from engine import shared
    from engine.artifacts import Artifact
    from engine.errors import UserError
    from engine.executors.local import run_child
    from engine.generation.settings import GenerationSettings
    from engine.measure.latency import MeasureSettings
    from engine.optimizations import parse_chain
    from engine.plan import StudySettings, default_threads
    from engine.results import Status
    from engine.study import submit_study

    outcome = run_child(_build_task, {}, DEMO_BUILD_TIMEOUT_S, sub_dir("logs") / "demo-generate.log")
    if outcome.status != Status.OK or outcome.result is None:
        where = "" if shared.enabled() else f"; see {sub_dir('logs') / 'demo-generate.log'}"
        raise UserError(f"the generation demo could not be built ({outcome.status}: {outcome.error}){where}")
    settings = StudySettings(measure=MeasureSettings(rounds=0), threads=default_threads(), timeout_s=300,
                             generation=GenerationSettings(prompt_lens=(32, 128), new_tokens=32, generations=5))
    study_id, _ = submit_study(Artifact.from_json(outcome.result["artifact"]),
                               [parse_chain(v) for v in DEMO_VARIANTS], ["torch"], [1, 4], settings,
                               name="Demo: generation (small decoder)", model_name="demo decoder",
                               created_by=created_by)
    return study_id, dict(outcome.result["report"])
