"""The GGUF export, read back with the `gguf` package's own reader (llama.cpp's Python reader; llama.cpp itself is
not needed here: bench/peers.py runs the files in it).

Every tensor must come back under llama.cpp's name, shape and type, with the q/k rows in llama.cpp's interleaved
rotary order: undone, the weights equal the checkpoint's exactly (F32), as torch rounds them (F16), or as our own
int8 grouping (model/quantize.py) quantizes them (Q8_0). That the permutation is the right one is checked against
the rotation itself: interleaved-pair rotary on the exported q and k gives the checkpoint's attention scores.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader

from model import TinyLLM, checkpoint
from model.config import ModelConfig
from model.export_gguf import (
    ExportError,
    export,
    from_interleaved,
    main,
    to_interleaved,
    why_not,
    write_gguf,
)
from model.export_hf import to_hf_state_dict
from model.model import apply_rope, rope_tables
from model.quantize import quantize_groups
from support import tiny_model

REPO = Path(__file__).resolve().parents[1]
BUNDLED = [REPO / "checkpoints" / "shakespeare", REPO / "checkpoints" / "multilingual"]
TYPES = ("f32", "f16", "q8_0")
GGML_TYPE = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16, "q8_0": GGMLQuantizationType.Q8_0}
Q8_0_BYTES = 34  # a block: the scale as float16, then 32 int8 values
RUN = {"capture_output": True, "text": True, "cwd": REPO, "timeout": 120}


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The tiny random checkpoint, a tied-embedding one, and the two bundled ones."""
    tied = tmp_path_factory.mktemp("tied") / "tied"
    checkpoint.save(tied, tiny_model(seed=3, tie_embeddings=True), training={"note": "tied, random"})
    return {"tiny": tiny_checkpoint, "tied": tied, **{p.name: p for p in BUNDLED}}


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    """(checkpoint name, type) -> the GGUF file, each written once."""
    out_dir, files = tmp_path_factory.mktemp("gguf"), {}

    def get(name: str, type_: str) -> Path:
        if (name, type_) not in files:
            files[name, type_] = export(checkpoints[name], out_dir / f"{name}-{type_}.gguf", type_)
        return files[name, type_]

    return get


def field(reader: GGUFReader, key: str):
    f = reader.get_field(key)
    assert f is not None, f"{key} missing"
    return f.contents()


def q8_0_values(data: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """A Q8_0 tensor's raw rows (rows, blocks * 34 bytes) as its int8 values (rows, columns) and its float16
    scales (rows, blocks)."""
    blocks = data.reshape(data.shape[0], columns // 32, Q8_0_BYTES)  # (rows, blocks, 34)
    scales = blocks[..., :2].copy().view(np.float16)[..., 0]
    values = blocks[..., 2:].copy().view(np.int8).reshape(data.shape[0], columns)
    return values, scales


def at_halves_away_from_zero(w: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Our int8 values q (..., K/32, 32) as rows, but rounded as Q8_0 rounds (C's roundf: halves away from zero)
    where w / scale falls exactly on a half; torch.round takes them to even (15 of the 10.8M in shakespeare)."""
    inv = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    exact = w.unflatten(-1, (-1, 32)) * inv  # quantize_groups' own arithmetic
    halves = exact.abs().frac() == 0.5
    return torch.where(halves, exact.sign() * exact.abs().ceil(), q).flatten(-2)


def expected_names(cfg: ModelConfig) -> set[str]:
    per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    names = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{t}.weight" for i in range(cfg.n_layer) for t in per_block
    }
    return names if cfg.tie_embeddings else names | {"output.weight"}


def ours_by_gguf_name(ckpt: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The checkpoint's own tensors, as they are, under the names gguf's own Hugging Face -> GGUF table
    (TensorNameMap, which convert_hf_to_gguf.py uses) gives their Hugging Face Llama names."""
    cfg = checkpoint.load_config(ckpt)
    hf = to_hf_state_dict(checkpoint.load_state_dict(ckpt, cfg), cfg)
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, cfg.n_layer)
    return cfg, {names.get_name(k, try_suffixes=(".weight",)): v for k, v in hf.items()}


@pytest.mark.parametrize("type_", TYPES)
@pytest.mark.parametrize("name", ["tiny", "tied", "shakespeare", "multilingual"])
def test_tensors_read_back(exported, checkpoints, name, type_):
    reader = GGUFReader(exported(name, type_))
    cfg, ours = ours_by_gguf_name(checkpoints[name])
    assert {t.name for t in reader.tensors} == expected_names(cfg)
    for t in reader.tensors:
        want = ours[t.name]
        assert [int(n) for n in t.shape] == list(want.shape)[::-1], t.name  # GGUF lists dimensions innermost first
        assert t.tensor_type == (GGMLQuantizationType.F32 if want.ndim == 1 else GGML_TYPE[type_]), t.name
        if t.tensor_type == GGMLQuantizationType.Q8_0:
            values, scales = q8_0_values(t.data, want.shape[1])
            data = torch.from_numpy(values.astype(np.float32))
        else:
            data = torch.from_numpy(np.array(t.data))
        if t.name.endswith(("attn_q.weight", "attn_k.weight")):
            data = from_interleaved(data, cfg.n_head)
            if t.tensor_type == GGMLQuantizationType.Q8_0:  # a row's scales move with it
                scales = from_interleaved(torch.from_numpy(scales.astype(np.float32)), cfg.n_head).numpy()
        if t.tensor_type == GGMLQuantizationType.F32:
            assert torch.equal(data, want), t.name
        elif t.tensor_type == GGMLQuantizationType.F16:
            assert torch.equal(data, want.half()), t.name  # round to nearest even, as torch rounds
        else:
            q, scale = quantize_groups(want, 32)  # our int8 grouping, at Q8_0's block of 32
            assert torch.equal(data, at_halves_away_from_zero(want, q, scale)), t.name
            assert np.array_equal(scales, scale[..., 0].numpy().astype(np.float16)), t.name


@pytest.mark.parametrize("name", ["tiny", "shakespeare"])
def test_q8_0_dequantizes_to_our_int8_within_its_scale_rounding(exported, checkpoints, name):
    """gguf's own dequantization of the file against model/quantize.py's q * scale: Q8_0 keeps each block's
    scale in float16 (a relative rounding of at most 2^-11), the int8 values are the same (halves rounded as
    Q8_0 rounds them)."""
    reader = GGUFReader(exported(name, "q8_0"))
    cfg, ours = ours_by_gguf_name(checkpoints[name])
    for t in reader.tensors:
        if t.tensor_type != GGMLQuantizationType.Q8_0:
            continue
        got = torch.from_numpy(gguf.quants.dequantize(t.data, GGMLQuantizationType.Q8_0))
        if t.name.endswith(("attn_q.weight", "attn_k.weight")):
            got = from_interleaved(got, cfg.n_head)
        q, scale = quantize_groups(ours[t.name], 32)
        q = at_halves_away_from_zero(ours[t.name], q, scale).unflatten(-1, (-1, 32))
        torch.testing.assert_close(got, (q * scale).flatten(-2), rtol=2**-11, atol=0)
        # within half a step of the weight, the step being off by the float16 scale's rounding at worst
        error = (got - ours[t.name]).unflatten(-1, (-1, 32)).abs()  # (rows, K/32, 32)
        assert (error <= scale * (0.5 + 127 * 2**-11) * (1 + 1e-6)).all(), t.name


@pytest.mark.parametrize("name", ["tiny", "shakespeare", "multilingual"])
def test_metadata(exported, checkpoints, name):
    reader = GGUFReader(exported(name, "f16"))
    cfg = checkpoint.load_config(checkpoints[name])
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.name") == name
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    card = field(reader, "general.source.url") if name != "tiny" else None
    if name != "tiny":  # the bundled checkpoints have a model card; the tiny one has none
        assert card == (checkpoints[name] / "README.md").as_posix() and Path(card).is_file()
        assert card in field(reader, "general.description")
    else:
        assert reader.get_field("general.source.url") is None
    hyper = {
        "llama.context_length": cfg.context_length,
        "llama.embedding_length": cfg.d_model,
        "llama.block_count": cfg.n_layer,
        "llama.feed_forward_length": cfg.mlp_hidden,
        "llama.attention.head_count": cfg.n_head,
        "llama.attention.head_count_kv": cfg.n_head,
        "llama.rope.dimension_count": cfg.head_dim,
        "llama.vocab_size": 256,
    }
    assert {k: field(reader, k) for k in hyper} == hyper
    assert field(reader, "llama.rope.freq_base") == np.float32(cfg.rope_theta)
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == np.float32(cfg.norm_eps)


def test_byte_vocabulary(exported):
    reader = GGUFReader(exported("tiny", "f32"))
    assert field(reader, "tokenizer.ggml.model") == "llama"
    assert field(reader, "tokenizer.ggml.tokens") == [f"<0x{b:02X}>" for b in range(256)]
    assert field(reader, "tokenizer.ggml.token_type") == [gguf.TokenType.BYTE] * 256
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    assert field(reader, "tokenizer.ggml.add_eos_token") is False
    assert field(reader, "tokenizer.ggml.add_space_prefix") is False
    assert reader.get_field("tokenizer.ggml.bos_token_id") is None  # nothing is a special token of ours


def interleaved_rope(x: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """llama.cpp's rotary for `llama` (rope type NORM), written from its definition: pair (2i, 2i+1) of each head
    turns by position * theta^(-2i/head_dim). x: (T, n_head, head_dim)."""
    d = cfg.head_dim
    angles = torch.arange(x.shape[0]).float()[:, None] * cfg.rope_theta ** (-torch.arange(0, d, 2).float() / d)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]  # (T, 1, d/2)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


def test_permutation_turns_our_rotary_into_llama_cpps(checkpoints):
    """q·k after our rotate-half rotary on the checkpoint's rows equals q·k after llama.cpp's interleaved
    rotary on the exported rows: the attention scores llama.cpp computes are ours."""
    cfg = checkpoint.load_config(checkpoints["shakespeare"])
    state = checkpoint.load_state_dict(checkpoints["shakespeare"], cfg)
    wq, wk = state["layers.2.self_attn.q_proj.weight"], state["layers.2.self_attn.k_proj.weight"]
    x = torch.randn(20, cfg.d_model, generator=torch.Generator().manual_seed(0))
    cos, sin = (t[:20][None, None] for t in rope_tables(cfg))  # (1, 1, T, hs)

    def heads(y):  # (T, C) -> (T, nh, hs)
        return y.view(20, cfg.n_head, cfg.head_dim)

    q = apply_rope(heads(x @ wq.T).transpose(0, 1)[None], cos, sin)[0]  # (nh, T, hs)
    k = apply_rope(heads(x @ wk.T).transpose(0, 1)[None], cos, sin)[0]
    ours = q @ k.transpose(-1, -2)  # (nh, T, T)
    q_ll = interleaved_rope(heads(x @ to_interleaved(wq, cfg.n_head).T), cfg).transpose(0, 1)
    k_ll = interleaved_rope(heads(x @ to_interleaved(wk, cfg.n_head).T), cfg).transpose(0, 1)
    torch.testing.assert_close(q_ll @ k_ll.transpose(-1, -2), ours, rtol=1e-4, atol=1e-4)
    assert torch.equal(from_interleaved(to_interleaved(wq, cfg.n_head), cfg.n_head), wq)
    assert not torch.allclose(heads(x @ wq.T).transpose(0, 1) @ heads(x @ wk.T).transpose(0, 1).mT, ours, atol=1e-2)


def test_api_export_matches_the_command(exported, checkpoints, tmp_path):
    llm = TinyLLM.load(checkpoints["tiny"], device="cpu")
    out = llm.export_gguf(tmp_path / "api.gguf", type="f16", name="mine", model_card="https://example.org/card")
    api, cli = GGUFReader(out), GGUFReader(exported("tiny", "f16"))
    assert field(api, "general.name") == "mine" and field(api, "general.source.url") == "https://example.org/card"
    assert [t.name for t in api.tensors] == [t.name for t in cli.tensors]
    for a, c in zip(api.tensors, cli.tensors):
        assert np.array_equal(a.data, c.data), a.name


# ------------------------------------------------------------------------------------------ refused and bad input


def test_refuses_what_llama_cannot_express(checkpoints, tmp_path):
    odd = tmp_path / "odd"
    checkpoint.save(odd, tiny_model(d_model=48, n_head=2, mlp_hidden=64), training={})
    with pytest.raises(SystemExit) as e:
        main([str(odd), str(tmp_path / "odd.gguf"), "--type", "q8_0"])
    assert "q8_0 needs d_model and mlp_hidden to be multiples of 32" in str(e.value.code)
    assert export(odd, tmp_path / "odd.gguf", "f16").is_file()  # f16 holds any width
    Wider = dataclasses.make_dataclass("Wider", [("attention_bias", bool, True)], bases=(ModelConfig,), frozen=True)
    assert "attention_bias" in why_not(Wider(), "f32")
    cfg = checkpoint.load_config(checkpoints["tiny"])
    state = checkpoint.load_state_dict(checkpoints["tiny"], cfg)
    state["layers.0.self_attn.q_proj.bias"] = torch.zeros(cfg.d_model)
    with pytest.raises(ExportError, match="q_proj.bias has no counterpart"):
        write_gguf(state, cfg, tmp_path / "bias.gguf", "f32", "bias")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd", "odd.gguf"]


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing checkpoint", "config.json: missing"),
        ("folder that does not exist", "does not exist"),
        ("output is a folder", "is a folder"),
        ("output overwrites the checkpoint", "is one of the checkpoint's own files"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(checkpoints, tmp_path, capsys, case, expect):
    ckpt, out = checkpoints["tiny"], tmp_path / "out.gguf"
    if case == "missing checkpoint":
        ckpt = tmp_path / "nowhere"
    elif case == "folder that does not exist":
        out = tmp_path / "no" / "such" / "out.gguf"
    elif case == "output is a folder":
        out = tmp_path
    else:
        out = ckpt / "model.safetensors"
    before = {p: p.stat().st_mtime_ns for p in [*tmp_path.rglob("*"), *ckpt.glob("*")]}
    with pytest.raises(SystemExit) as e:
        main([str(ckpt), str(out)])
    message = str(e.value.code)
    assert message.startswith("tinyllm-export-gguf: error: ") and expect in message and "\n" not in message
    assert {p: p.stat().st_mtime_ns for p in [*tmp_path.rglob("*"), *ckpt.glob("*")]} == before


def test_unknown_type_is_one_line(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(checkpoints["tiny"]), str(tmp_path / "out.gguf"), "--type", "q4_0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'q4_0'" in err and "f32" in err
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_old_file(checkpoints, tmp_path, monkeypatch):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"the previous export")

    def disk_full(self, *args, **kwargs):
        self.fout[0].write(b"\0" * 1000)  # part of the tensors, then the failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(SystemExit) as e:
        main([str(checkpoints["tiny"]), str(out)])
    assert "No space left on device" in str(e.value.code)
    assert out.read_bytes() == b"the previous export" and list(tmp_path.iterdir()) == [out]


def test_command_line(checkpoints, tmp_path):
    """The installed module as a process: a written file, then a missing checkpoint as one line on stderr."""
    cmd = [sys.executable, "-m", "model.export_gguf"]
    ok = subprocess.run([*cmd, str(checkpoints["tiny"]), str(tmp_path / "t.gguf"), "--type", "q8_0"], **RUN)
    assert ok.returncode == 0 and "wrote" in ok.stdout and GGUFReader(tmp_path / "t.gguf").tensors
    bad = subprocess.run([*cmd, str(tmp_path / "nowhere"), str(tmp_path / "x.gguf")], **RUN)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "config.json: missing" in bad.stderr
    assert not (tmp_path / "x.gguf").exists()
