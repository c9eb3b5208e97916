"""Server settings: command-line flags > TINYLLM_* environment variables > .env file > defaults."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def path_list(value):
    """A list of paths from the command line or TINYLLM_CHECKPOINT: a JSON list, comma-separated, or one path."""
    if isinstance(value, os.PathLike):
        return [value]
    if isinstance(value, str):
        value = value.strip()
        return json.loads(value) if value.startswith("[") else [p.strip() for p in value.split(",") if p.strip()]
    return value


# NoDecode: the environment's value reaches path_list as it is, instead of being parsed as JSON first.
PathList = Annotated[list[Path], NoDecode, BeforeValidator(path_list)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TINYLLM_",
        env_file=".env",
        extra="ignore",
        cli_prog_name="tinyllm-serve",
        cli_kebab_case=True,
        cli_implicit_flags=True,
    )

    checkpoint: PathList = Field(
        default_factory=lambda: [Path("checkpoints/shakespeare"), Path("checkpoints")],
        min_length=1,
        description="checkpoint folder to serve, or a folder of checkpoint folders (each is served); repeatable, "
        "or comma-separated. Each model is named after its folder; the first is the default. Default: every bundled "
        "model, shakespeare first",
    )
    host: str = Field("127.0.0.1", description="address to bind (0.0.0.0 for all interfaces)")
    port: int = Field(8000, ge=0, le=65535)
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "int8", "float16"] = Field(
        "auto",
        description="on CPU, the weight form generation runs in (float32, int8, bfloat16; auto = the checkpoint's "
        "default: int8 where its weight_forms.json allows it, else float32); on CUDA the model's dtype (auto = "
        "bfloat16)",
    )
    native: bool = Field(
        True,
        description="generate in the native step (model/native/: float32 or int8 on a CPU, batch-invariant) where "
        "it is built and has the form; --no-native: the torch step",
    )
    kernels: Literal["auto", "vnni", "avx2", "scalar"] = Field(
        "auto",
        description="the native step's kernel path (auto = the fastest this CPU runs; they compute the same bits): "
        "pins one for a test or a comparison; a path this CPU cannot run, or no native step, stops the start",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    threads: int = Field(
        0,
        ge=0,
        description="CPU threads for torch's kernels (0 = one per core but one, at least one: the event loop that "
        "speaks HTTP keeps a core of its own, as vLLM's CPU backend leaves one)",
    )

    # limits
    max_prompt_bytes: int = Field(65536, ge=1, description="longest prompt accepted (before truncation)")
    max_new_tokens: int = Field(4096, ge=1, description="largest max_new_tokens a request may ask for")
    max_batch: int = Field(32, ge=1, description="sequences decoded together (KV-cache slots)")
    max_queue: int = Field(256, ge=0, description="requests waiting for a slot; beyond it, 503")
    max_streams: int = Field(256, ge=1, description="streaming responses open at once; beyond it, 503")
    prefill_chunk: int = Field(128, ge=1, description="prompt bytes prefilled per engine step")
    request_timeout: float = Field(120.0, gt=0, description="seconds a request may take, queueing included")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body")
    attention_max_cells: int = Field(4_000_000, ge=1, description="cap on JSON attention cells")
    shutdown_grace: float = Field(10.0, ge=0, description="seconds in-flight requests get to finish on SIGTERM")

    api_key: SecretStr | None = Field(None, description="when set, every route but /health needs this bearer token")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS (off when empty)")
