"""A tiny random-weight Llama with a byte-level BPE tokenizer trained offline on the bundled prompt text, saved as a
zipped Hugging Face folder (safetensors): the generation tests' model."""

from __future__ import annotations

import zipfile
from pathlib import Path


def write_zip(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(folder.iterdir()):
            out.write(path, f"{folder.name}/{path.name}")
    return archive


def save_tiny_llama(root: Path, name: str = "tiny-llama", head_dim: int | None = None, layers: int = 2,
                    initializer_range: float = 0.02) -> Path:
    """A Llama of `layers` layers (hidden 32, GQA 4/2 heads; head size 8 unless `head_dim` says otherwise) and its
    tokenizer, zipped under `root`; weights drawn with `initializer_range` (larger: logits further from uniform)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from engine.generation.prompts import PROMPT_TEXT, bundled_text

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([bundled_text(PROMPT_TEXT)], trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, eos_token_id=0,
                         initializer_range=initializer_range,
                         bos_token_id=0, architectures=["LlamaForCausalLM"],
                         **({"head_dim": head_dim} if head_dim else {}))
    torch.manual_seed(0)
    folder = root / name
    LlamaForCausalLM(config).eval().save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return write_zip(folder, root / f"{name}.zip")
