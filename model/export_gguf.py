"""Export a checkpoint as one GGUF file, the format llama.cpp, its server, Ollama and LM Studio read.

    tinyllm-export-gguf checkpoints/shakespeare shakespeare.gguf --type f16

Written with the `gguf` package (llama.cpp's own writer) as architecture `llama`. Our model is Hugging Face's
Llama (see model/export_hf.py), so the export is a renaming, with one change to the numbers: llama.cpp's `llama`
rotates interleaved pairs (0,1), (2,3), ... of each head where we rotate halves (i, i + head_dim/2), so the rows
of q_proj and k_proj are permuted within each head, as llama.cpp's convert_hf_to_gguf.py does for LlamaModel.

The vocabulary is 256 byte tokens "<0x00>" ... "<0xFF>" (token type BYTE) under llama.cpp's SentencePiece-style
tokenizer model "llama", with no BOS or EOS added and no space prefix: feed a prompt's bytes as token ids and
the ids come back as bytes. The file is written beside OUT and renamed into place: no partial file on failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch

from model import checkpoint
from model.config import ModelConfig
from model.tokenizer import VOCAB_SIZE

TYPES = ("f32", "f16", "q8_0")
Q8_0_BLOCK = 32  # values that share one scale in llama.cpp's Q8_0
MODEL_CARD = "README.md"
# The ModelConfig fields this export maps onto GGUF's llama (dropout is training only). A field added later is
# refused until someone decides what it means in llama.cpp, rather than silently dropped.
MAPPED_FIELDS = {
    "vocab_size",
    "context_length",
    "n_layer",
    "n_head",
    "d_model",
    "mlp_hidden",
    "norm_eps",
    "rope_theta",
    "tie_embeddings",
    "dropout",
}
# our name within a block -> llama.cpp's (gguf's MODEL_TENSOR names for LLAMA)
BLOCK_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_TENSORS = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight"}
ROTATED = ("self_attn.q_proj.weight", "self_attn.k_proj.weight")


class ExportError(Exception):
    """An export that cannot be done; reported as one line."""


def why_not(cfg: ModelConfig, type_: str) -> str | None:
    """Why GGUF's llama (or the chosen type) cannot hold this model, in one line; None when it can."""
    unmapped = sorted(set(cfg.to_dict()) - MAPPED_FIELDS)
    if unmapped:
        return f"config field(s) {', '.join(unmapped)} have no counterpart in GGUF's llama architecture"
    if cfg.vocab_size != VOCAB_SIZE:
        return f"vocab_size {cfg.vocab_size}: the GGUF vocabulary is the {VOCAB_SIZE} bytes"
    if type_ not in TYPES:
        return f"unknown type {type_!r}; one of {', '.join(TYPES)}"
    if type_ == "q8_0" and (cfg.d_model % Q8_0_BLOCK or cfg.mlp_hidden % Q8_0_BLOCK):
        return (
            f"q8_0 needs d_model and mlp_hidden to be multiples of {Q8_0_BLOCK} (got {cfg.d_model}, "
            f"{cfg.mlp_hidden}); use f16 or f32"
        )
    return None


def to_interleaved(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """q/k projection rows from rotate-half order to llama.cpp's interleaved pairs: within each head, row 2i
    becomes our row i and row 2i+1 our row i + head_dim/2 (convert_hf_to_gguf.py's LlamaModel.permute)."""
    out_features, in_features = w.shape
    # (C_out, C_in) -> (n_head, 2 halves, head_dim/2, C_in) -> (n_head, head_dim/2, 2, C_in) -> (C_out, C_in)
    return w.reshape(n_head, 2, out_features // n_head // 2, in_features).transpose(1, 2).reshape(w.shape)


def from_interleaved(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of to_interleaved: llama.cpp's q/k rows back in our rotate-half order."""
    out_features, in_features = w.shape
    # (C_out, C_in) -> (n_head, head_dim/2, 2, C_in) -> (n_head, 2, head_dim/2, C_in) -> (C_out, C_in)
    return w.reshape(n_head, out_features // n_head // 2, 2, in_features).transpose(1, 2).reshape(w.shape)


def gguf_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our tensors under llama.cpp's names, float32, q/k permuted; output.weight left out when tied (llama.cpp
    then uses token_embd.weight). A tensor with no place in GGUF's llama is refused."""
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().float().cpu()
        if name == "lm_head.weight":
            if not cfg.tie_embeddings:
                out["output.weight"] = tensor
        elif name in TOP_TENSORS:
            out[TOP_TENSORS[name]] = tensor
        elif name.startswith("layers.") and (inner := name.split(".", 2)[2]) in BLOCK_TENSORS:
            if inner in ROTATED:
                tensor = to_interleaved(tensor, cfg.n_head)
            out[f"blk.{name.split('.')[1]}.{BLOCK_TENSORS[inner]}"] = tensor
        else:
            raise ExportError(f"tensor {name} has no counterpart in GGUF's llama architecture")
    return {name: out[name] for name in sorted(out, key=file_order)}


def file_order(name: str) -> tuple:
    """Where a tensor goes in the file: as llama.cpp's converter writes Llama, in the order data flows through
    it (the same file whatever order the weights came in)."""
    if name.startswith("blk."):
        _, layer, inner = name.split(".", 2)
        return 1, int(layer), list(BLOCK_TENSORS.values()).index(inner)
    return {"token_embd.weight": (0,), "output_norm.weight": (2,), "output.weight": (3,)}[name]


def encode(tensor: torch.Tensor, type_: str):
    """(numpy data, ggml type) of one tensor: 1-D tensors (the norms) stay F32, as llama.cpp's converter keeps them."""
    data = tensor.numpy()
    if data.ndim == 1 or type_ == "f32":
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if type_ == "f16":
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


def add_metadata(writer, cfg: ModelConfig, type_: str, name: str, model_card: str | None) -> None:
    writer.add_name(name)
    description = "TinyLLM, a byte-level transformer: token id = byte value."
    if model_card:
        writer.add_source_url(model_card)  # where its model card is, as the exporter saw it
        description += f" Model card: {model_card}"
    writer.add_description(description)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}
    writer.add_file_type(file_type.get(type_, gguf.LlamaFileType.MOSTLY_Q8_0))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.context_length)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.mlp_hidden)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.n_head)  # plain multi-head attention
    writer.add_rope_dimension_count(cfg.head_dim)  # every dimension of a head rotates
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    add_byte_vocabulary(writer)


def add_byte_vocabulary(writer) -> None:
    """256 byte tokens: id b is "<0xBB>" (upper-case hex, as llama.cpp looks bytes up), type BYTE, so that
    llama.cpp turns each back into its byte. Nothing is added around a prompt."""
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"<0x{b:02X}>" for b in range(VOCAB_SIZE)])
    writer.add_token_scores([0.0] * VOCAB_SIZE)
    writer.add_token_types([gguf.TokenType.BYTE] * VOCAB_SIZE)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)


def write_gguf(state: dict[str, torch.Tensor], cfg: ModelConfig, out, type_: str, name: str, model_card=None) -> Path:
    """Write the GGUF file for these weights to `out`, atomically: into a temporary file beside it, renamed over
    `out` when complete (a failure removes it and leaves `out` as it was)."""
    if reason := why_not(cfg, type_):
        raise ExportError(reason)
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; give the path of the .gguf file to write")
    if not out.parent.is_dir():
        raise ExportError(f"{out}: the folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ExportError(f"{out}: cannot write into {out.parent} (permission denied)")
    tensors = gguf_tensors(state, cfg)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, "llama")
        add_metadata(writer, cfg, type_, name, model_card)
        for tensor_name, tensor in tensors.items():
            data, ggml_type = encode(tensor, type_)
            writer.add_tensor(tensor_name, data, raw_dtype=ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a model file is for others to read
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def export(ckpt, out, type_: str = "f32") -> Path:
    """Write checkpoint `ckpt` as the GGUF file `out`; named after the checkpoint's folder, pointing to its card."""
    folder = checkpoint.resolve(ckpt)
    out = Path(out)
    if out.resolve().parent == folder.resolve() and out.name in (checkpoint.CONFIG, checkpoint.WEIGHTS, MODEL_CARD):
        raise ExportError(f"{out}: is one of the checkpoint's own files; it would be overwritten")
    cfg = checkpoint.load_config(ckpt)
    if reason := why_not(cfg, type_):  # before reading the weights
        raise ExportError(reason)
    state = checkpoint.load_state_dict(ckpt, cfg)
    card = Path(ckpt) / MODEL_CARD
    return write_gguf(state, cfg, out, type_, Path(ckpt).name, card.as_posix() if card.exists() else None)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the error and the choices) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="tinyllm-export-gguf", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", metavar="CHECKPOINT", type=Path, help="TinyLLM checkpoint folder")
    p.add_argument("out", metavar="OUT.gguf", type=Path, help="the GGUF file to write (replaced if it exists)")
    p.add_argument(
        "--type",
        dest="type_",
        choices=TYPES,
        default="f32",
        help="the matrices' type: f32 (exact, default), f16, or q8_0 (int8 in blocks of 32); norms stay f32",
    )
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        out = export(args.checkpoint, args.out, args.type_)
    except (ExportError, checkpoint.CheckpointError, OSError) as e:
        sys.exit(f"tinyllm-export-gguf: error: {e}")
    print(f"wrote {out} ({args.type_}, {out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
