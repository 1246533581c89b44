"""Input and output specifications: names, dtypes, shapes with named dynamic axes, integer ranges, input roles."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import UserError

DTYPES = frozenset(
    {"float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"}
)
INTEGER_DTYPES = frozenset({"int64", "int32", "int16", "int8", "uint8"})
# The first dynamic axis of every input is the batch axis; other dynamic axes whose name looks like a
# sequence length take `seq_len`.
BATCH_AXIS = "batch"
DEFAULT_SEQ_LEN = 128
DEFAULT_INT_RANGE = (0, 100)

Dim = int | str

# What an input means to a text model, so synthesized values look like a tokenizer's output: a real batch
# attends to every token (mask all ones), is one segment (token types zeros), counts positions 0..S-1 and
# holds ordinary token ids. A random 0/1 mask instead changes the work an attention kernel does.
TOKEN_IDS, ATTENTION_MASK, TOKEN_TYPES, POSITIONS = "input_ids", "attention_mask", "token_type_ids", "position_ids"
ROLES = (TOKEN_IDS, ATTENTION_MASK, TOKEN_TYPES, POSITIONS)
_ROLE_NAMES = {
    TOKEN_IDS: {"input_ids", "input_id", "ids", "tokens", "token_ids", "src_tokens", "decoder_input_ids"},
    ATTENTION_MASK: {"attention_mask", "mask", "input_mask", "attn_mask", "attention_masks", "decoder_attention_mask"},
    TOKEN_TYPES: {"token_type_ids", "token_type_id", "segment_ids", "segment_id", "token_types", "type_ids"},
    POSITIONS: {"position_ids", "position_id", "positions", "pos_ids"},
}

_SPEC_ITEM = re.compile(
    r"^\s*(?P<name>[A-Za-z_][\w.\-/]*)\s*:\s*(?P<dtype>\w+)\s*\[(?P<shape>[^\]]*)\]"
    r"\s*(?:\{\s*(?P<low>-?\d+)\s*,\s*(?P<high>-?\d+)\s*\})?\s*$"
)


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: name, numpy dtype name, shape (ints are fixed, strings are named dynamic axes)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    # Half-open [low, high) range for integer inputs (token ids inside the vocabulary).
    value_range: tuple[int, int] | None = None
    # Half-open [low, high) outside which a value is invalid, where the model says so (an HF config's vocab_size):
    # uploaded data is checked against it. value_range is what synthesized inputs use, which may be narrower.
    bound: tuple[int, int] | None = None
    # What the input means (one of ROLES), for realistic synthesized values; None for anything else.
    role: str | None = None
    # Token ids inside value_range that synthesized ids leave out (a tokenizer's special tokens).
    special_ids: tuple[int, ...] = ()
    # The id a padded position holds, where the model or its tokenizer says (None: unknown, 0 is used).
    pad_id: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UserError(
                f"input '{self.name}' has dtype '{self.dtype}'; use one of {', '.join(sorted(DTYPES))}"
            )
        for d in self.shape:
            if isinstance(d, int) and d < 0:
                raise UserError(f"input '{self.name}' has a negative dimension {d}")
        if self.value_range is not None and self.value_range[0] >= self.value_range[1]:
            raise UserError(
                f"input '{self.name}' has an empty value range {{{self.value_range[0]},{self.value_range[1]}}}"
            )
        if self.role is not None and self.role not in ROLES:
            raise UserError(f"input '{self.name}' has role '{self.role}'; use one of {', '.join(ROLES)}")

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.shape) and isinstance(self.shape[0], str)

    def concrete_shape(self, batch_size: int, seq_len: int | None = None) -> tuple[int, ...]:
        """The shape for one batch: the first axis is the batch, named axes take `seq_len`."""
        out: list[int] = []
        for i, d in enumerate(self.shape):
            if isinstance(d, int):
                if i == 0 and d != batch_size:
                    raise UserError(
                        f"input '{self.name}' has a fixed batch dimension of {d}; "
                        f"batch size {batch_size} cannot run (re-export with a dynamic batch axis)"
                    )
                out.append(d)
            elif i == 0:
                out.append(batch_size)
            else:
                out.append(seq_len if seq_len is not None else DEFAULT_SEQ_LEN)
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "value_range": list(self.value_range) if self.value_range else None,
            **({"bound": list(self.bound)} if self.bound else {}),
            "role": self.role,
            **({"special_ids": list(self.special_ids)} if self.special_ids else {}),
            **({"pad_id": self.pad_id} if self.pad_id is not None else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], output: bool = False) -> TensorSpec:
        vr, bound = data.get("value_range"), data.get("bound")
        name, dtype = str(data["name"]), str(data["dtype"])
        value_range = (int(vr[0]), int(vr[1])) if vr else None
        if "role" in data or output:
            role = data.get("role")
        else:
            # stored before roles were recorded: recognise it by its name, and keep its token ids off the
            # special ones as a fresh inspection would
            role = guess_role(name, dtype)
            if role == TOKEN_IDS and value_range is not None and value_range[0] == 0:
                value_range = conservative_token_range(value_range[1])
        pad = data.get("pad_id")
        return cls(
            name=name,
            dtype=dtype,
            shape=tuple(data["shape"]),
            value_range=value_range,
            bound=(int(bound[0]), int(bound[1])) if bound else None,
            role=role,
            special_ids=tuple(int(i) for i in data.get("special_ids") or ()),
            pad_id=int(pad) if pad is not None else None,
        )

    def describe(self) -> str:
        rng = f"{{{self.value_range[0]},{self.value_range[1]}}}" if self.value_range else ""
        return self._typed() + rng

    def label(self) -> str:
        """For people: like describe(), with the value range written as the values it admits."""
        return self._typed() + (f" in {range_label(self.value_range)}" if self.value_range else "")

    def _typed(self) -> str:
        return f"{self.name}:{self.dtype}[{','.join(str(d) for d in self.shape)}]"


def guess_role(name: str, dtype: str) -> str | None:
    """The role an input's name gives it (`attention_mask`, `input_mask` and `mask` are masks), else None.

    Token ids, token types and positions are integers; a mask is an integer or bool, or a float named for
    attention (a float `mask` may be an image's).
    """
    key = name.lower().rsplit("/", 1)[-1].rsplit(".", 1)[-1]  # an exporter's "model/input_ids" or "x.input_ids"
    for role, names in _ROLE_NAMES.items():
        if key not in names:
            continue
        if dtype in INTEGER_DTYPES or (role == ATTENTION_MASK and (dtype == "bool" or "att" in key)):
            return role
    return None


# Token ids left out of a vocabulary whose tokenizer is unknown (an ONNX graph only says how many rows its
# embedding has). BERT WordPiece vocabularies (30522 uncased, 28996 cased, 119547 multilingual) keep [PAD],
# [UNK], [CLS], [SEP], [MASK] and the [unusedN] slots, whose embeddings were never trained, below id 1000;
# RoBERTa, BART and XLM-R keep <s>, <pad>, </s>, <unk> at 0..3 and <mask> last; GPT-2 keeps <|endoftext|> last
# and T5 its 100 sentinels. Leaving out a few thousand ordinary ids costs nothing: latency does not depend on
# which rows an embedding reads, and the rest of the vocabulary is as realistic.
_SPECIAL_HEAD = 1000
_SPECIAL_TAIL = 128


def conservative_token_range(vocab: int) -> tuple[int, int]:
    """The ids synthesized tokens use in a vocabulary of `vocab` rows whose special ids are unknown: without the
    first min(1000, vocab/20) and the last min(128, vocab/100)."""
    low, high = min(_SPECIAL_HEAD, vocab // 20), vocab - min(_SPECIAL_TAIL, vocab // 100)
    return (low, high) if high > low else (0, max(vocab, 1))


# Ranges this small are shown as their values ({0, 1}), larger ones as an interval.
_LISTED_VALUES = 8


def range_label(value_range: tuple[int, int] | list[int]) -> str:
    """A half-open integer range as a person reads it: `{0, 1}` for a mask's [0, 2), `[0, 30522)` for token ids."""
    low, high = int(value_range[0]), int(value_range[1])
    if high - low <= _LISTED_VALUES:
        return "{" + ", ".join(str(v) for v in range(low, high)) + "}"
    return f"[{low}, {high})"


@dataclass(frozen=True)
class InputSpec:
    """What a model takes and returns; outputs may be unknown (empty) until a first run."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...] = field(default=())
    seq_len: int | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise UserError("the model has no inputs; give them with --input-spec 'x:float32[B,3,224,224]'")
        names = [t.name for t in self.inputs]
        if len(set(names)) != len(names):
            raise UserError(f"input names repeat in the spec: {', '.join(names)}")
        if self.seq_len is not None and self.seq_len < 1:
            raise UserError(f"--seq-len must be a positive integer, got {self.seq_len}")

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def fixed_batch(self) -> int | None:
        """The batch size every input fixes, or None when the batch axis is dynamic."""
        fixed = {t.shape[0] for t in self.inputs if t.shape and isinstance(t.shape[0], int)}
        return fixed.pop() if len(fixed) == 1 and all(not t.dynamic_batch for t in self.inputs) else None

    def shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        return {t.name: t.concrete_shape(batch_size, self.seq_len) for t in self.inputs}

    def with_seq_len(self, seq_len: int | None) -> InputSpec:
        return InputSpec(self.inputs, self.outputs, seq_len)

    def with_outputs(self, outputs: tuple[TensorSpec, ...]) -> InputSpec:
        return InputSpec(self.inputs, outputs, self.seq_len)

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "seq_len": self.seq_len,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InputSpec:
        return cls(
            inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_json(t, output=True) for t in data.get("outputs", [])),
            seq_len=data.get("seq_len"),
        )

    def describe(self) -> str:
        return ";".join(t.describe() for t in self.inputs)

    def label(self) -> str:
        return "; ".join(t.label() for t in self.inputs)

    @classmethod
    def parse(cls, text: str, seq_len: int | None = None) -> InputSpec:
        """Parse `x:float32[B,3,224,224]; ids:int64[B,S]{0,30522}` (`;` separates inputs).

        The first axis is the batch; a name stands for a dynamic axis; `{low,high}` is the
        half-open value range of an integer input.
        """
        items = [part for part in text.split(";") if part.strip()]
        if not items:
            raise UserError("--input-spec is empty; write it like 'x:float32[B,3,224,224]'")
        tensors = []
        for item in items:
            match = _SPEC_ITEM.match(item)
            if not match:
                raise UserError(
                    f"cannot read input spec '{item.strip()}'; write it like 'x:float32[B,3,224,224]' "
                    "or 'ids:int64[B,S]{0,30522}'"
                )
            dims: list[Dim] = []
            raw_dims = [d.strip() for d in match["shape"].split(",") if d.strip()]
            for i, d in enumerate(raw_dims):
                if d.isdigit():
                    dims.append(int(d))
                elif re.fullmatch(r"[A-Za-z_]\w*", d):
                    dims.append(BATCH_AXIS if i == 0 else d)
                else:
                    raise UserError(f"input spec '{item.strip()}' has a bad dimension '{d}'")
            dtype = match["dtype"].lower()
            value_range = None
            if match["low"] is not None:
                value_range = (int(match["low"]), int(match["high"]))
            elif dtype in INTEGER_DTYPES:
                value_range = DEFAULT_INT_RANGE
            # an explicit range is the user's word: token ids keep it whole
            tensors.append(TensorSpec(match["name"], dtype, tuple(dims), value_range,
                                      role=guess_role(match["name"], dtype)))
        return cls(tuple(tensors), seq_len=seq_len)
