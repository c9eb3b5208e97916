"""The training script, run as users run it: `python -m model.train` and `torchrun ... -m model.train`."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from model import checkpoint
from model.detectors import probe_scores

REPO = Path(__file__).resolve().parents[1]
# One thread per process: runs that are compared must do the same arithmetic, and parallel runs share the cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TINY = [
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--d-model",
    "32",
    "--context-length",
    "16",
    "--batch-size",
    "4",
    "--warmup-steps",
    "2",
    "--eval-windows",
    "8",
    "--sample-bytes",
    "8",
    "--lr",
    "3e-3",
    "--optimizer",  # not the default (adamw, which the SIGKILL test's runs use): its resume and DDP are tested here
    "muon",
    "--device",
    "cpu",
]
N = 4  # steps before the resume


def train_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "model.train", *map(str, args)]


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_ok(cmd: list[str]) -> subprocess.CompletedProcess:
    result = finish(start(cmd))
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """About 4 kB of text with 1- to 4-byte characters, the same every time."""
    rng = random.Random(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog;", "café", "naïve", "日本語", "🙂\n"]
    path = tmp_path_factory.mktemp("data") / "data.txt"
    path.write_text(" ".join(rng.choice(words) for _ in range(700)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_file) -> dict:
    """2N steps in one run ("full"); N steps then N more with --resume ("resumed"), same schedule; a torchrun.

    Started together: each process spends seconds importing torch, and there are two cores to share.
    """
    root = tmp_path_factory.mktemp("runs")
    common = [
        *TINY,
        "--data",
        data_file,
        "--dropout",
        "0.1",
        "--lr-decay-steps",
        2 * N,
        "--eval-every",
        100,
        "--log-every",
        1,
    ]
    full = start(train_cmd(*common, "--out", root / "full", "--max-steps", 2 * N))
    half = start(train_cmd(*common, "--out", root / "resumed", "--max-steps", N))
    ddp = start(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "model.train",
            *map(
                str,
                [
                    *TINY,
                    "--data",
                    data_file,
                    "--out",
                    root / "ddp",
                    "--max-steps",
                    3,
                    "--eval-every",
                    3,
                    "--sample-bytes",
                    0,
                ],
            ),
        ]
    )
    first = finish(half)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = start(train_cmd(*common, "--out", root / "resumed", "--max-steps", 2 * N, "--resume"))
    results = {name: finish(proc) for name, proc in [("full", full), ("resumed", resumed), ("ddp", ddp)]}
    for name in ("full", "resumed"):
        assert results[name].returncode == 0, results[name].stderr[-3000:]
    return {
        "full": root / "full",
        "resumed": root / "resumed",
        "ddp": root / "ddp",
        "ddp_result": results["ddp"],
        "full_result": results["full"],
        "data": data_file,
    }


def test_run_writes_a_complete_checkpoint(runs):
    out = runs["full"]
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "training.json",
        "optimizer.pt",
        "metrics.jsonl",
        "loss.png",
    }
    assert not out.with_name("full.tmp").exists() and not out.with_name("full.old").exists()
    cfg = checkpoint.load_config(out)
    assert (cfg.n_layer, cfg.n_head, cfg.d_model, cfg.context_length, cfg.dropout) == (1, 2, 32, 16, 0.1)

    t = json.loads((out / "training.json").read_text())
    assert t["step"] == 2 * N
    assert t["bytes_seen"] == 2 * N * 4 * 16  # steps x batch x context
    assert math.isfinite(t["train_loss"]) and math.isfinite(t["val_loss"])
    assert t["val_loss"] < math.log(256), "a few steps beat the uniform guess"
    assert t["val_bits_per_byte"] == pytest.approx(t["val_loss"] / math.log(2))
    data = runs["data"].read_bytes()
    assert t["data"] == [{"path": str(runs["data"]), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    assert "--max-steps" in t["command"] and str(runs["data"]) in t["command"]
    assert t["wall_time_s"] > 0
    assert t["torch_version"] == torch.__version__
    assert t["device"].startswith("cpu")
    assert t["processes"] == 1

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 2 * N + 1))
    assert [r["step"] for r in rows if "val_loss" in r] == [2 * N]
    assert rows[-1]["val_loss"] == t["val_loss"]
    # Each evaluation logs every head's induction score on the probe, and the best (model/detectors.py).
    model = checkpoint.load_model(out)
    assert np.array(rows[-1]["induction_scores"]).shape == (1, 2)
    assert abs(rows[-1]["induction_score"] - max(map(max, rows[-1]["induction_scores"]))) <= 5e-5
    np.testing.assert_allclose(rows[-1]["induction_scores"], probe_scores(model, batch=2)["induction_probe"], atol=1e-4)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    state = torch.load(out / "optimizer.pt", weights_only=True)
    assert state["optimizer"]["muon"]["state"] and state["optimizer"]["adamw"]["state"], "saved for --resume"
    # how it trained: Muon (float32 Newton–Schulz on a CPU without bfloat16) beside AdamW, the schedule, no compile
    assert set(t["optimizer"]) == {"muon", "adamw"}
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert t["optimizer"]["muon"]["newton_schulz_dtype"] == ("bfloat16" if bf16 else "float32")
    assert t["optimizer"]["muon"]["groups"][0]["tensors"] == 7  # one layer's attention and MLP matrices
    assert t["schedule"] == {
        "shape": "wsd", "warmup_steps": 2, "decay_fraction": 0.4, "final": 0.0, "steps": 2 * N, "seconds": None,
        "max_steps": 2 * N,
    }  # fmt: skip
    assert t["compiled"] is False, "auto: a run of a few steps does not compile"
    output = runs["full_result"].stdout + runs["full_result"].stderr
    assert "\r" not in output, "no progress-bar redraws in a log that is not a terminal"
    assert "optimizer: muon; schedule: wsd; torch.compile: no (auto:" in output
    model = checkpoint.load_model(out)
    assert model.num_params() == t["num_params"]


def test_resume_is_exact(runs):
    full = json.loads((runs["full"] / "training.json").read_text())
    resumed = json.loads((runs["resumed"] / "training.json").read_text())
    assert resumed["step"] == full["step"] == 2 * N
    assert resumed["val_loss"] == full["val_loss"]
    assert resumed["train_loss"] == full["train_loss"]
    a, b = checkpoint.load_model(runs["full"]), checkpoint.load_model(runs["resumed"])
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), f"{name} differs after resume"
    # the resumed run's metrics continue the first part's: per-step losses are the same numbers
    rows_full = [json.loads(line) for line in (runs["full"] / "metrics.jsonl").read_text().splitlines()]
    rows_res = [json.loads(line) for line in (runs["resumed"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows_res if "loss" in r] == [r["loss"] for r in rows_full if "loss" in r]
    assert [r["step"] for r in rows_res if "val_loss" in r] == [N, 2 * N]


def test_torchrun_two_processes_on_cpu(runs):
    """`torchrun --nproc-per-node 2 -m model.train`: DistributedDataParallel over gloo on the CPU."""
    result, out = runs["ddp_result"], runs["ddp"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 process(es)" in result.stdout + result.stderr
    t = checkpoint.load_training(out)
    assert t["processes"] == 2 and t["step"] == 3
    assert t["bytes_seen"] == 3 * 4 * 16 * 2
    model = checkpoint.load_model(out)
    with torch.inference_mode():
        logits, _ = model(torch.tensor([list(b"the quick")]))
    assert torch.isfinite(logits).all()


def test_bad_input_exits_with_one_line(tmp_path, data_file, tiny_checkpoint):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "short.txt").write_bytes(b"just forty bytes of data, not much more")
    other = tmp_path / "other"  # a checkpoint of a different model
    checkpoint.save(other, checkpoint.load_model(tiny_checkpoint), training={"step": 0})
    cases = {
        "data path not found": ["--data", tmp_path / "missing.txt", "--out", tmp_path / "a"],
        "data file is empty": ["--data", tmp_path / "empty.txt", "--out", tmp_path / "b"],
        "context length 16 is larger than the": ["--data", tmp_path / "short.txt", "--out", tmp_path / "c"],
        "holds a checkpoint of a different model": ["--data", data_file, "--out", other],
    }
    procs = {problem: start(train_cmd(*TINY, "--max-steps", 1, *args)) for problem, args in cases.items()}
    for problem, proc in procs.items():
        result = finish(proc)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0, problem
        assert "Traceback" not in result.stderr, result.stderr
        assert len(lines) == 1 and lines[0].startswith("tinyllm-train: error: "), result.stderr
        assert problem in lines[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    assert checkpoint.load_config(other) == checkpoint.load_config(tiny_checkpoint), "left untouched"


def saved_step(out: Path) -> int:
    """The step of the checkpoint in `out`, 0 if none; read while a training process may be swapping it."""
    try:
        return checkpoint.load_training(out).get("step", 0) if checkpoint.exists(out) else 0
    except (OSError, checkpoint.CheckpointError):  # renamed between the check and the read
        return 0


def test_sigkill_during_saves_leaves_a_checkpoint_to_resume(tmp_path, data_file):
    """Kill a run that saves every step at random moments; each time the folder must load and resume."""
    out = tmp_path / "ck"
    steps = 30
    args = [
        "--data",
        data_file,
        "--out",
        out,
        "--n-layer",
        "2",
        "--n-head",
        "2",
        "--d-model",
        "64",
        "--context-length",
        "32",
        "--batch-size",
        "8",
        "--eval-windows",
        "4",
        "--sample-bytes",
        "4",
        "--warmup-steps",
        "5",
        "--max-steps",
        steps,
        "--log-every",
        "1",
        "--device",
        "cpu",
    ]
    rng = random.Random(1)
    tmp = out.with_name("ck.tmp")
    last_step, kills = 0, 0
    while kills < 3:
        proc = start(train_cmd(*args, "--eval-every", 1, *(["--resume"] if checkpoint.exists(out) else [])))
        # Wait until a save is under way past the one we resumed from and stop the run there (SIGSTOP: it cannot go
        # on to finish, however fast the machine); let it run on for a random moment, stopped again, then kill it.
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if tmp.exists() and saved_step(out) > last_step:
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGSTOP)
        if rng.random() < 0.5:  # half the kills land later in the save, or just after it
            proc.send_signal(signal.SIGCONT)
            time.sleep(rng.uniform(0, 0.01))
            proc.send_signal(signal.SIGSTOP)
        proc.kill()
        _, err = proc.communicate()
        assert proc.returncode != 0, f"the run ended before it was killed:\n{err[-2000:]}"
        kills += 1
        assert checkpoint.exists(out), f"no checkpoint after kill {kills}"
        model = checkpoint.load_model(out)  # loads: complete config and weights, old or new
        assert model.config.n_layer == 2
        step = checkpoint.load_training(out)["step"]
        assert step >= last_step, "a kill never loses a completed save"
        rows = (checkpoint.resolve(out) / "metrics.jsonl").read_text().splitlines()
        assert json.loads(rows[-1])["step"] == step, "the metrics saved with a checkpoint end at its step"
        last_step = step
    run_ok(train_cmd(*args, "--eval-every", 10, "--resume"))
    t = checkpoint.load_training(out)
    assert t["step"] == steps
    assert set(t["optimizer"]) == {"adamw"}, "the default optimizer, resumed through the kills"
    assert not tmp.exists() and not out.with_name("ck.old").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in rows if "loss" in r]
    assert logged == list(range(1, steps + 1)), "every step's loss survives the kills, once"
    checkpoint.load_model(out)


def test_every_save_carries_its_metrics_and_plot(tmp_path, data_file, monkeypatch):
    """metrics.jsonl and loss.png are inside the atomic save: a kill just after one cannot lose the history."""
    from model import train as train_script

    real_save = checkpoint.save
    seen = []

    def save_then_look(path, *args, **kwargs):
        real_save(path, *args, **kwargs)
        # what a SIGKILL at this moment would leave behind
        metrics = Path(path) / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else [{}]
        seen.append((checkpoint.load_training(path)["step"], rows[-1].get("step"), (Path(path) / "loss.png").exists()))

    monkeypatch.setattr(checkpoint, "save", save_then_look)
    train_script.main(
        [
            *TINY,
            "--data",
            str(data_file),
            "--out",
            str(tmp_path / "ck"),
            "--max-steps",
            "4",
            "--eval-every",
            "2",
            "--sample-bytes",
            "0",
        ]
    )
    assert seen == [(2, 2, True), (4, 4, True)]


def train_loop():
    from model import train as train_script

    return train_script


def run_in_process(argv: list) -> None:
    train_loop().main([str(a) for a in argv])


class SteppedClock:
    """A stand-in for the time module in the training loop: each reading is `step` seconds after the last, so a
    time budget ends after the same steps on a fast machine and a slow one."""

    def __init__(self, step: float):
        self.now, self.step = 1e9, step

    def time(self) -> float:
        self.now += self.step
        return self.now


@pytest.mark.parametrize(
    "flag", ["--batch-size", "--grad-accum", "--max-steps", "--eval-every", "--eval-windows", "--log-every"]
)
def test_counts_below_one_are_refused(tmp_path, data_file, capsys, flag):
    with pytest.raises(SystemExit) as e:
        run_in_process([*TINY, "--data", data_file, "--out", tmp_path / "ck", flag, 0])
    assert e.value.code == 2
    assert f"tinyllm-train: error: argument {flag}: must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()


def test_resume_without_optimizer_state_is_refused(tiny_checkpoint, tmp_path, data_file):
    out = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, out)  # written by checkpoint.save() without an optimizer, not by training
    with pytest.raises(SystemExit) as e:
        run_in_process([*TINY, "--data", data_file, "--out", out, "--max-steps", 1, "--resume"])
    message = str(e.value.code)
    assert message.startswith("tinyllm-train: error: ") and "\n" not in message
    assert "optimizer.pt: missing" in message


def test_a_time_budget_stops_the_run_decayed(tmp_path, data_file, capsys, monkeypatch):
    """--max-minutes alone: the schedule is laid over the time, so the last steps run at the final rate."""
    out = tmp_path / "ck"
    monkeypatch.setattr(train_loop(), "time", SteppedClock(0.1))  # the run's clock: 0.1 s a reading, on any machine
    run_in_process([*TINY, "--data", data_file, "--out", out, "--max-minutes", 0.05, "--eval-every", 10**6])
    t = checkpoint.load_training(out)
    assert t["schedule"]["seconds"] == 3.0 and t["schedule"]["max_steps"] is None and t["step"] > 10
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"lr"' in line]
    assert max(lrs) == pytest.approx(3e-3) and lrs[-1] < 0.1 * 3e-3, "peak, then decayed to near zero by the end"
    assert f"stopping at step {t['step']}: --max-minutes 0.05 reached" in capsys.readouterr().out


def test_resume_with_another_optimizer_is_refused(runs, tmp_path):
    out = tmp_path / "ck"
    shutil.copytree(runs["full"], out)
    with pytest.raises(SystemExit) as e:
        run_in_process(
            [*TINY, "--data", runs["data"], "--out", out, "--max-steps", 10, "--resume", "--optimizer", "adamw"]
        )
    assert str(e.value.code) == (
        "tinyllm-train: error: --resume: the checkpoint was trained with muon+adamw, this run uses adamw"
    )


def test_data_one_byte_longer_than_the_context_is_enough(tmp_path, data_file):
    """context_length + 1 bytes hold exactly one (input, target) window; training and evaluation use it."""
    (tmp_path / "train.txt").write_bytes(data_file.read_bytes()[:17])
    (tmp_path / "val.txt").write_bytes(data_file.read_bytes()[100:117])
    run_in_process(
        [
            *TINY,
            "--data",
            tmp_path / "train.txt",
            "--val-data",
            tmp_path / "val.txt",
            "--out",
            tmp_path / "ck",
            "--max-steps",
            2,
            "--eval-every",
            2,
            "--sample-bytes",
            0,
        ]
    )
    assert checkpoint.load_training(tmp_path / "ck")["step"] == 2
    (tmp_path / "short.txt").write_bytes(data_file.read_bytes()[:16])
    with pytest.raises(SystemExit, match="context length 16 is larger than the training data"):
        run_in_process(
            [
                *TINY,
                "--data",
                tmp_path / "short.txt",
                "--val-data",
                tmp_path / "val.txt",
                "--out",
                tmp_path / "ck2",
                "--max-steps",
                2,
            ]
        )
