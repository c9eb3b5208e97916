"""TinyLLM's model package: a byte-level Llama-style transformer, its tokenizer, sampling and checkpoints."""

from model.api import Generation, TinyLLM
from model.config import ModelConfig
from model.model import Transformer
from model.sampling import SamplingParams
from model.tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer", "Generation", "ModelConfig", "SamplingParams", "TinyLLM", "Transformer"]
