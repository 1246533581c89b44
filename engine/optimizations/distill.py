"""Knowledge distillation: the model from the previous passes learns to reproduce the original model.

The student is what the chain has built so far (e.g. a pruned model); the teacher is the original. For
transformers `layers=K` first builds the student by keeping K of its layers, evenly spaced, weights copied; a
decoder's kept layers are renumbered for its KV cache (engine/optimizations/decoders.py), and without a data file
it trains on windows of the bundled prompt text through its tokenizer (KL per token on the next-token logits).
Loss: KL divergence between temperature-softened logits (plus cross-entropy on the labels when the data
has them), or mean squared error on the last hidden states for encoders without a head. Training is
deterministic for a seed, and the build cache keeps the result, so a study trains each variant once.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from engine.errors import NotApplicable
from engine.optimizations.base import OptConfig, implementation, register
from engine.variants import BuildContext

# Learning rates chosen when lr=0: AdamW on transformers wants a far smaller step than on small conv nets.
AUTO_LR_TRANSFORMER = 1e-4
AUTO_LR = 1e-3
WARMUP_FRACTION = 0.1
WEIGHT_DECAY = 0.01
# Teacher outputs are computed once and kept when they fit in this much memory, else batch by batch.
TEACHER_CACHE_BYTES = 512 * 2**20
# The loss against the teacher is reported on at most this many training samples.
REPORT_SAMPLES = 512


@dataclass(frozen=True)
class DistillConfig(OptConfig):
    epochs: int = 10
    # 0 picks the rate for the model: 1e-4 for transformers, 1e-3 otherwise
    lr: float = 0.0
    temperature: float = 4.0
    # weight of the teacher's soft targets; 1 - alpha goes to the labels' cross-entropy when labels exist
    alpha: float = 0.5
    batch_size: int = 32
    seed: int = 0
    # transformers: keep this many of the layers, evenly spaced (0 keeps them all)
    layers: int = 0
    # train on at most this many samples (0: all of them)
    max_samples: int = 0

    # the build cache keys a distilled variant by the training data too
    uses_training_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 1 <= self.epochs <= 10_000:
            raise ValueError(f"epochs={self.epochs} must be between 1 and 10000")
        if not 0.0 <= self.lr <= 1.0 or math.isnan(self.lr):
            raise ValueError(f"lr={self.lr} must be between 0 and 1 (0 picks one for the model)")
        if not 0.0 < self.temperature <= 100.0:
            raise ValueError(f"temperature={self.temperature} must be above 0 and at most 100")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must be between 0 and 1")
        if not 1 <= self.batch_size <= 65_536:
            raise ValueError(f"batch_size={self.batch_size} must be between 1 and 65536")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must not be negative")
        if not 0 <= self.layers <= 1_000:
            raise ValueError(f"layers={self.layers} must be between 0 (keep all) and 1000")
        if self.max_samples < 0:
            raise ValueError(f"max_samples={self.max_samples} must not be negative (0 uses every sample)")

    def unsupported_reason(self, model_format: str) -> str | None:
        if self.layers and model_format != "hf":
            return (f"distill:layers={self.layers} keeps layers of a Hugging Face transformer; "
                    f"this model is {model_format}")
        return None


register("distill", stage="torch", config=DistillConfig, formats=("torch",),
         summary="train the optimized model to match the original (KL on logits, MSE on hidden states)")


@implementation("distill", "torch")
def distill(student: Any, config: DistillConfig, ctx: BuildContext) -> Any:
    import torch

    from engine.modules import HFWrapper, parameter_count

    if ctx.original is None:
        raise NotApplicable("distill needs the original model as its teacher, and the build gave none")
    teacher = ctx.original()
    if config.layers:
        if not isinstance(student, HFWrapper):
            raise NotApplicable(f"distill:layers={config.layers} needs a Hugging Face transformer")
        _keep_layers(student, config.layers, ctx)
    inputs, labels, source = ctx.training(config.max_samples)
    names = ctx.spec.names
    tensors = [torch.from_numpy(inputs[n]) for n in names]
    count = int(tensors[0].shape[0])
    lr = config.lr or (AUTO_LR_TRANSFORMER if _is_transformer(student) else AUTO_LR)
    device, placed = _place(student, teacher, tensors, training_device(ctx.gpu or ctx.device))
    if placed:
        ctx.notes.append(placed)
    masks = _sparsity_masks(student)  # after the move: the masks live beside their weights
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            loss_before, loss_after, used_labels = _train(student, teacher, tensors, labels, config, lr, masks, ctx,
                                                          device)
    finally:
        # the variant is saved, exported and replayed from the CPU; the cell measured next in this process
        # must not find the teacher, the optimizer or cached batches in the GPU's memory pool
        student.to("cpu")
        teacher.to("cpu")
        if device != "cpu":
            torch.cuda.empty_cache()
    seconds = time.perf_counter() - start
    ctx.train_s = (ctx.train_s or 0.0) + seconds
    used = " and its labels" if used_labels else ""
    ctx.notes.append(
        f"distill trained {parameter_count(student):,} parameters for {config.epochs} epoch(s) on {count} "
        f"samples of {source}{used} (lr {lr:g}, T {config.temperature:g}, seed {config.seed}) on {device} in "
        f"{seconds:.1f} s; loss against the teacher {loss_before:.4g} -> {loss_after:.4g}"
        + ("; pruned (zero) weights stayed zero" if masks else "")
    )
    return student


def training_device(cell_device: str) -> str:
    """Train where the cell runs: on the GPU for a CUDA cell (when torch sees one), else on the CPU."""
    if not cell_device.startswith("cuda"):
        return "cpu"
    import torch

    return cell_device if torch.cuda.is_available() else "cpu"


def _place(student: Any, teacher: Any, tensors: list[Any], device: str) -> tuple[str, str | None]:
    """Move teacher and student to `device` and run one sample through both there; a module that cannot
    move (a traced graph holding constants on the CPU) trains on the CPU instead, with a note saying why."""
    import torch

    if device == "cpu":
        return "cpu", None
    try:
        student.to(device)
        teacher.to(device)
        probe = [t[:1].to(device) for t in tensors]
        with torch.no_grad():
            student(*probe)
            teacher(*probe)
    except (RuntimeError, AssertionError, NotImplementedError) as exc:
        student.to("cpu")
        teacher.to("cpu")
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return "cpu", f"distill: trained on the CPU, as the model does not run on {device} ({reason})"
    return device, None


def _is_transformer(module: Any) -> bool:
    """A transformers model, or a graph with layer norms or attention (an exported transformer)."""
    import torch

    from engine.modules import HFWrapper

    if isinstance(module, HFWrapper):
        return True
    if isinstance(module, torch.fx.GraphModule):
        ops = {torch.ops.aten.layer_norm.default, torch.ops.aten.scaled_dot_product_attention.default}
        return any(node.target in ops for node in module.graph.nodes)
    return False


def _keep_layers(student: Any, count: int, ctx: BuildContext) -> None:
    from engine.optimizations import decoders, surgery
    from engine.optimizations.encoders import find_encoder

    if decoders.is_causal_lm(student.model):
        # a decoder's KV cache is kept by layer index: the kept layers are renumbered and the config resized
        decoder = decoders.find_decoder(student)
        total = decoder.count
        if count >= total:
            raise NotApplicable(f"distill:layers={count} keeps every layer: the model has {total}")
        keep = evenly_spaced(total, count)
        ctx.edits.extend(decoders.keep_layers(student, decoder, keep))
        ctx.notes.append(f"distill kept decoder layers {', '.join(map(str, keep))} of {total}, renumbered "
                         f"0-{count - 1} for the KV cache")
        return
    encoder = find_encoder(student)
    if encoder is None:
        raise NotApplicable(f"distill:layers found no layer list in {type(student.model).__name__}")
    total = len(encoder.layers)
    if count >= total:
        raise NotApplicable(f"distill:layers={count} keeps every layer: the model has {total}")
    keep = evenly_spaced(total, count)
    ctx.edits.append(surgery.keep_layers(student, encoder.layers_path, keep))
    if encoder.config_path:
        ctx.edits.append(surgery.set_attr(student, f"{encoder.config_path}.num_hidden_layers", count))
    ctx.notes.append(f"distill kept layers {', '.join(map(str, keep))} of {total}")


def evenly_spaced(total: int, count: int) -> list[int]:
    """`count` of `total` layer indices, evenly spaced, first and last included (one layer: the last)."""
    if count == 1:
        return [total - 1]
    return [math.floor(i * (total - 1) / (count - 1) + 0.5) for i in range(count)]


def _kinds(student: Any, outputs: list[Any]) -> list[str]:
    """Per output: "kl" for logits, "mse" for hidden states."""
    from engine.modules import HFWrapper

    if isinstance(student, HFWrapper):
        return ["kl" if student.output_name == "logits" else "mse"] * len(outputs)
    return ["kl" if o.dim() == 2 and o.is_floating_point() else "mse" for o in outputs]


def _as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _teacher_loss(student_out: list[Any], teacher_out: list[Any], kinds: list[str], temperature: float) -> Any:
    import torch.nn.functional as F

    total: Any = 0
    for s, t, kind in zip(student_out, teacher_out, kinds, strict=True):
        if kind == "kl":
            s_log = F.log_softmax(s.float() / temperature, dim=-1).reshape(-1, s.shape[-1])
            t_log = F.log_softmax(t.float() / temperature, dim=-1).reshape(-1, t.shape[-1])
            # T^2 keeps the gradients' scale independent of the temperature (Hinton et al.)
            total = total + F.kl_div(s_log, t_log, log_target=True, reduction="batchmean") * temperature**2
        else:
            total = total + F.mse_loss(s.float(), t.float())
    return total


def _usable_labels(labels: Any, outputs: list[Any], kinds: list[str], count: int) -> Any:
    import torch

    if labels is None or kinds[0] != "kl":
        return None
    y = torch.as_tensor(labels)
    first = outputs[0]
    if y.dtype.is_floating_point or y.shape[0] != count or y.dim() != first.dim() - 1:
        return None
    if int(y.min()) < 0 or int(y.max()) >= first.shape[-1]:
        return None
    return y.long().to(first.device)


@contextmanager
def _training(module: Any) -> Any:
    """Training mode: dropout and batch statistics on; exported graphs get their batch norms switched."""
    import torch

    if isinstance(module, torch.fx.GraphModule):
        # torch.export graphs are traced in eval mode and refuse .train(); their batch norms take the
        # mode as an argument, which is switched here so the running statistics follow the new weights
        norms = [n for n in module.graph.nodes
                 if n.op == "call_function" and n.target is torch.ops.aten.batch_norm.default and len(n.args) > 5]
        for node in norms:
            node.update_arg(5, True)
        module.recompile()
        try:
            yield
        finally:
            for node in norms:
                node.update_arg(5, False)
            module.recompile()
    elif isinstance(module, torch.jit.ScriptModule):
        yield  # the archive's modes are compiled in: only the weights train
    else:
        module.train()
        try:
            yield
        finally:
            module.eval()


def _run(module: Any, tensors: list[Any], index: Any, device: str = "cpu") -> list[Any]:
    """One batch: the data stays on the CPU, each batch goes to the training device."""
    return _as_list(module(*(t[index].to(device) for t in tensors)))


def _train(student: Any, teacher: Any, tensors: list[Any], labels: Any, config: DistillConfig, lr: float,
           masks: list[tuple[Any, Any]], ctx: BuildContext, device: str = "cpu") -> tuple[float, float, bool]:
    import torch
    import torch.nn.functional as F

    count = int(tensors[0].shape[0])
    batch = min(config.batch_size, count)
    for p in teacher.parameters():
        p.requires_grad_(False)
    report = torch.arange(min(count, REPORT_SAMPLES))
    with torch.no_grad():
        probe = _run(teacher, tensors, report[:batch], device)
    kinds = _kinds(student, probe)
    y = _usable_labels(labels, probe, kinds, count)
    out_bytes = sum(o[0].numel() * 4 for o in probe) * count
    # the teacher's outputs, kept on the CPU: GPU memory holds only the batch in flight
    cached = _teacher_outputs(teacher, tensors, batch, device) if out_bytes <= TEACHER_CACHE_BYTES else None

    def targets(index: Any) -> list[Any]:
        if cached is not None:
            return [o[index].to(device) for o in cached]
        with torch.no_grad():
            return _run(teacher, tensors, index, device)

    def evaluate() -> float:
        with torch.no_grad():
            losses = [float(_teacher_loss(_run(student, tensors, report[i:i + batch], device),
                                          targets(report[i:i + batch]), kinds, config.temperature))
                      * len(report[i:i + batch])
                      for i in range(0, len(report), batch)]
        return sum(losses) / len(report)

    before = evaluate()
    params = [p for p in student.parameters() if p.is_floating_point()]
    trainable = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
    per_epoch = max(1, count // batch)  # a last partial batch is dropped: batch norm needs more than one sample
    steps = config.epochs * per_epoch
    warmup = max(1, int(steps * WARMUP_FRACTION))

    def schedule(step: int) -> float:  # linear warm-up, then cosine decay to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    with _training(student):
        for epoch in range(config.epochs):
            order = torch.randperm(count, generator=generator)
            for i in range(per_epoch):
                index = order[i * batch:(i + 1) * batch]
                out = _run(student, tensors, index, device)
                loss = _teacher_loss(out, targets(index), kinds, config.temperature)
                if y is not None:
                    ce = F.cross_entropy(out[0].float().reshape(-1, out[0].shape[-1]), y[index].reshape(-1))
                    loss = config.alpha * loss + (1 - config.alpha) * ce
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    for weight, mask in masks:
                        weight.mul_(mask)
                scheduler.step()
                step += 1
                ctx.progress(f"distill epoch {epoch + 1}/{config.epochs}", step / steps)
    for p, flag in zip(params, trainable, strict=True):
        p.requires_grad_(flag)
    return before, evaluate(), y is not None


def _sparsity_masks(student: Any) -> list[tuple[Any, Any]]:
    """Linear/Conv weights with exact zeros (left by unstructured pruning) and where they are non-zero.

    Training re-applies them after every step, so that distillation after pruning keeps the sparsity.
    """
    from engine.optimizations.prune import linear_and_conv_weights

    return [(w, (w != 0).to(w.dtype)) for _, w in linear_and_conv_weights(student) if bool((w == 0).any())]


def _teacher_outputs(teacher: Any, tensors: list[Any], batch: int, device: str = "cpu") -> list[Any]:
    import torch

    count = int(tensors[0].shape[0])
    chunks: list[list[Any]] = []
    with torch.no_grad():
        for i in range(0, count, batch):
            chunks.append([o.cpu() for o in _run(teacher, tensors, torch.arange(i, min(count, i + batch)), device)])
    return [torch.cat([c[j] for c in chunks]) for j in range(len(chunks[0]))]
