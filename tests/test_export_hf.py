"""The Hugging Face export, checked against transformers' own LlamaForCausalLM as the outside reference.

A tiny random checkpoint (untied and tied embeddings) is exported, loaded with `from_pretrained`, and
must give TinyLLM's logits, greedy bytes and attention probabilities; its tokenizer must give the bytes as
ids and decode as ByteTokenizer does, and `pipeline("text-generation")` on the folder, offline, must say
what TinyLLM.generate says.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402

from model import TinyLLM, checkpoint  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.export_hf import export, hf_config, main, to_hf_state_dict  # noqa: E402
from model.generate import generate  # noqa: E402
from model.model import Transformer  # noqa: E402
from model.runner import Runner  # noqa: E402
from model.sampling import SamplingParams  # noqa: E402
from model.tokenizer import ByteTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEXT = "Grüße, 世界! 🙂 ok"  # 1-, 2-, 3- and 4-byte UTF-8 characters
PROMPT = "Grüße, мир, 日本 🙂"
NEW_TOKENS = 16

transformers.logging.set_verbosity_error()  # "Loading weights" bars and max_length notices


def random_model(tie: bool) -> Transformer:
    """A tiny model with spread-out weights: distinct logits (a stable greedy path), norms that are not all ones.

    Non-default norm_eps and rope_theta make a config field that the export drops show up in the logits.
    """
    cfg = ModelConfig(
        context_length=64,
        n_layer=2,
        n_head=2,
        d_model=32,
        mlp_hidden=64,
        norm_eps=1e-6,
        rope_theta=500.0,
        tie_embeddings=tie,
    )
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # RMSNorm weights: a swapped norm would change the output
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def exported(request, tmp_path_factory):
    """(TinyLLM model loaded from the checkpoint, the exported folder)."""
    root = tmp_path_factory.mktemp("tied" if request.param else "untied")
    checkpoint.save(root / "ckpt", random_model(request.param), training={})
    export(root / "ckpt", root / "hf")
    return checkpoint.load_model(root / "ckpt"), root / "hf"


def text_ids() -> torch.Tensor:
    return torch.tensor([list(TEXT.encode("utf-8"))])  # (1, T)


def test_exported_files(exported):
    model, out = exported
    cfg = model.config
    hf = json.loads((out / "config.json").read_text())
    assert hf["model_type"] == "llama" and hf["architectures"] == ["LlamaForCausalLM"]
    assert (hf["vocab_size"], hf["hidden_size"], hf["intermediate_size"]) == (256, 32, 64)
    assert (hf["num_hidden_layers"], hf["num_attention_heads"], hf["num_key_value_heads"]) == (2, 2, 2)
    assert hf["max_position_embeddings"] == cfg.context_length
    assert hf["tie_word_embeddings"] is cfg.tie_embeddings
    assert hf["bos_token_id"] is None and hf["eos_token_id"] is None

    with safe_open(str(out / "model.safetensors"), framework="pt") as sf:
        keys = set(sf.keys())
    ours = set(model.state_dict()) - ({"lm_head.weight"} if cfg.tie_embeddings else set())
    assert keys == {k if k == "lm_head.weight" else "model." + k for k in ours}
    assert ("lm_head.weight" in keys) is not cfg.tie_embeddings

    gen = transformers.GenerationConfig.from_pretrained(out)
    assert gen.max_length == cfg.context_length and gen.eos_token_id is None

    tok = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert sorted(tok["model"]["vocab"].values()) == list(range(256)) and tok["model"]["merges"] == []
    assert tok["added_tokens"] == [] and tok["post_processor"] is None


@torch.no_grad()
def test_logits_match(exported):
    model, out = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.dtype == torch.float32
    assert hf.config.tie_word_embeddings is model.config.tie_embeddings
    ids = text_ids()
    ours, _ = model(ids)
    theirs = hf(ids).logits
    assert ours.shape == theirs.shape == (1, ids.shape[1], 256)
    diff = (ours - theirs).abs().max().item()
    assert diff < 1e-4, f"logits differ from transformers' by {diff}"


def test_greedy_generate_matches(exported):
    model, out = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = list(TEXT.encode("utf-8"))
    raw = SamplingParams(temperature=0, valid_utf8=False)  # HF's greedy knows no UTF-8 rule
    ours = [s.token for s in generate(Runner(model), prompt, NEW_TOKENS, raw)]
    ids = torch.tensor([prompt])
    seq = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS)
    theirs = seq[0, len(prompt) :].tolist()
    assert len(ours) == NEW_TOKENS
    assert len(set(ours)) > 1, "the random model repeats one byte: a weak check, change its seed"
    assert theirs == ours


@torch.no_grad()
def test_attention_matches_eager(exported):
    model, out = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = text_ids()
    _, ours = model(ids, need_weights=True)
    theirs = hf(ids, output_attentions=True).attentions
    assert len(ours) == len(theirs) == model.config.n_layer
    for layer, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape == (1, model.config.n_head, ids.shape[1], ids.shape[1])
        diff = (a - b).abs().max().item()
        assert diff < 1e-5, f"layer {layer}: attention differs from transformers' by {diff}"


@torch.no_grad()
def test_in_memory_llama(exported):
    """The recipe in to_hf_state_dict's docstring (what a benchmark uses) gives the same model."""
    model, _ = exported
    cfg = model.config
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig.from_dict(hf_config(cfg))).eval()
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), cfg), strict=not cfg.tie_embeddings)
    ids = text_ids()
    diff = (model(ids)[0] - hf(ids).logits).abs().max().item()
    assert diff < 1e-4, f"logits differ from transformers' by {diff}"


# ---------------------------------------------------------------- the tokenizer


@pytest.fixture(scope="module")
def hf_tokenizer(exported):
    return transformers.AutoTokenizer.from_pretrained(exported[1])


def test_tokenizer_ids_are_the_bytes(hf_tokenizer):
    tok = hf_tokenizer
    assert len(tok) == 256 and tok.model_max_length == 64
    assert tok.all_special_ids == [] and tok.bos_token is None and tok.eos_token is None and tok.pad_token is None
    for text in (PROMPT, TEXT, " leading and  double spaces , \n\ttabs\r\n", "\x00\x7f\u0100Ā<s></s>", ""):
        ids = list(text.encode("utf-8"))
        assert tok(text)["input_ids"] == ids, f"{text!r}: not its bytes"
        assert tok.decode(ids) == text, f"{text!r}: decodes differently"
    assert tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(list(range(256)))) == list(range(256))


def test_tokenizer_decodes_any_bytes_as_byte_tokenizer(hf_tokenizer):
    """Bytes that are no UTF-8 text by themselves (a cut character, a stray continuation byte) become
    U+FFFD exactly where ByteTokenizer.decode puts them."""
    ours = ByteTokenizer()
    cases = [[b] for b in range(256)]
    data = PROMPT.encode("utf-8")
    cases += [list(data[:n]) for n in range(len(data) + 1)] + [list(data[n:]) for n in range(len(data))]
    rng = random.Random(0)
    cases += [[rng.randrange(256) for _ in range(rng.randrange(1, 16))] for _ in range(2000)]
    cases += [
        [0xED, 0xA0, 0x80],
        [0xF4, 0x90, 0x80, 0x80],
        [0xC0, 0xAF],
        [0xE2, 0x82],
    ]  # surrogate, > U+10FFFF, overlong
    for ids in cases:
        assert hf_tokenizer.decode(ids) == ours.decode(ids), f"{bytes(ids)!r}"


def test_pipeline_offline_says_what_tinyllm_says(tmp_path):
    """The README's recipe, run as a user would (a fresh process, no network): greedy text and bytes equal."""
    checkpoint.save(tmp_path / "ckpt", random_model(tie=False), training={})
    export(tmp_path / "ckpt", tmp_path / "hf")
    script = (
        "import json, sys\n"
        "from transformers import logging, pipeline\n"
        "logging.set_verbosity_error()\n"
        "p = pipeline('text-generation', model=sys.argv[1])\n"
        "kw = dict(max_new_tokens=int(sys.argv[3]), do_sample=False)\n"
        "text = p(sys.argv[2], return_full_text=False, **kw)[0]['generated_text']\n"
        "ids = p(sys.argv[2], return_tensors=True, **kw)[0]['generated_token_ids']\n"
        "print(json.dumps({'text': text, 'ids': list(ids)}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "hf"), PROMPT, str(NEW_TOKENS)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = json.loads(r.stdout.strip().splitlines()[-1])

    llm = TinyLLM.load(tmp_path / "ckpt", device="cpu")
    ours = llm.generate(PROMPT, max_new_tokens=NEW_TOKENS, temperature=0, utf8="any")  # the raw model, as HF
    assert len(ours.tokens) == NEW_TOKENS
    assert any(b >= 0x80 for b in ours.tokens) and "\ufffd" in ours.text, (
        "the greedy bytes hold no invalid UTF-8: a weak check, change the model's seed"
    )
    prompt_ids = list(PROMPT.encode("utf-8"))
    # generated_token_ids holds the prompt too: the pipeline returns the whole sequence as ids
    assert theirs["ids"] == prompt_ids + ours.tokens
    assert theirs["text"] == ours.text


# ---------------------------------------------------------------- the command line


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "model.export_hf", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_the_five_files(tmp_path):
    checkpoint.save(tmp_path / "ckpt", random_model(tie=False), training={})
    r = run_cli(tmp_path / "ckpt", tmp_path / "out" / "hf")
    assert r.returncode == 0, r.stderr
    assert str(tmp_path / "out" / "hf") in r.stdout
    assert sorted(p.name for p in (tmp_path / "out" / "hf").iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_cli_bad_checkpoint_is_one_line(tmp_path):
    r = run_cli(tmp_path / "nowhere", tmp_path / "out")
    assert r.returncode != 0
    assert r.stderr.startswith("tinyllm-export-hf: error:") and "config.json" in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "CHECKPOINT OUT_DIR" in capsys.readouterr().out


def test_truncated_weights_and_same_folder_are_errors(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    checkpoint.save(ckpt, random_model(tie=True), training={})
    for out in (ckpt, Path(str(ckpt) + "/")):
        with pytest.raises(SystemExit) as e:
            main([str(ckpt), str(out)])
        assert "checkpoint folder itself" in str(e.value.code)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SystemExit) as e:
        main([str(ckpt), str(tmp_path / "out")])
    message = str(e.value.code)
    assert message.startswith("tinyllm-export-hf: error:") and "model.safetensors" in message
    assert "\n" not in message
