"""The attention atlas (model/atlas.py, tinyllm-atlas, GET /v1/atlas*) against an independent float64 recomputation from
the maps POST /v1/attention serves, window by window; the per-character atlas against the byte atlas aggregated by
hand; bad input and a missing atlas as 4xx naming the field."""

from __future__ import annotations

import io
import os
import shutil
from collections import defaultdict

import httpx
import numpy as np
import pytest

from model import checkpoint, detectors
from model.atlas import ATLAS_JSON, ATLAS_TENSORS
from model.atlas_cli import main as atlas_main
from model.atlas_store import Atlas, AtlasMissing
from server.process import running_server
from support import assert_envelope, sharp_model

# Each 64-byte window (the tiny model's context) holds é, 猫 and 🙂 once, so that inside a window the byte pairs of a
# character occur only inside it (their bytes are all different): the character atlas is then the byte atlas.
SEGMENT = "Hi, Hello! hi é there; Him 猫 his 🙂 it."
SEGMENT += "." * (64 - len(SEGMENT.encode()))
CORPUS = (SEGMENT * 3 + "Hi").encode()
L, H = 2, 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("atlas") / "sharp"
    checkpoint.save(path, sharp_model(seed=7), training={"note": "random weights, sharp attention"})
    return path


@pytest.fixture(scope="module")
def served(folder):
    with running_server(folder) as s:
        yield s


def get(server, path: str, **params) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", params=params, timeout=60)


def recompute(server) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """Per pair: count, summed weights (L, H) float64; per distance: count, summed weights; from /v1/attention."""
    counts, sums = defaultdict(int), defaultdict(lambda: np.zeros((L, H)))
    d_count, d_sum = np.zeros(64), np.zeros((L, H, 64))
    for start in range(0, len(CORPUS), 64):
        window = CORPUS[start : start + 64]
        r = httpx.post(f"{server.url}/v1/attention", json={"text": window.decode(), "format": "npy"}, timeout=60)
        maps = np.load(io.BytesIO(r.content)).astype(np.float64)  # (L, H, T, T)
        for q in range(len(window)):
            for k in range(q + 1):
                counts[window[q], window[k]] += 1
                sums[window[q], window[k]] += maps[:, :, q, k]
                d_count[q - k] += 1
                d_sum[:, :, q - k] += maps[:, :, q, k]
    return counts, sums, d_count, d_sum


def test_no_atlas_yet_is_a_404_naming_the_command(served, folder):
    error = assert_envelope(get(served, "/v1/atlas", query="H", key="i"), 404, "model")
    assert "tinyllm-atlas" in error["message"] and str(folder) in error["message"]
    info = get(served, "/v1/model").json()  # what the page reads, rather than ask routes that answer 404
    assert info["atlas"] is None and info["atlas_note"] == error["message"]


def test_an_empty_corpus_writes_nothing(folder, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert atlas_main([str(folder), "--data", str(empty)]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert not (folder / ATLAS_JSON).exists() and not (folder / ATLAS_TENSORS).exists()


def test_atlas_matches_a_float64_recomputation_from_the_served_maps(served, folder, tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_bytes(CORPUS)
    assert atlas_main([str(folder), "--data", str(data)]) == 0
    atlas = Atlas.load(folder, L, H, checkpoint.content_sha256(folder))
    counts, sums, d_count, d_sum = recompute(served)
    assert atlas.record["bytes"] == len(CORPUS) and atlas.record["windows"] == 4
    pairs = sorted(q * 256 + k for q, k in counts)
    assert atlas.pairs.tolist() == pairs
    baseline = d_sum / np.maximum(d_count, 1)
    expected = defaultdict(lambda: np.zeros((L, H)))
    for start in range(0, len(CORPUS), 64):
        window = CORPUS[start : start + 64]
        for q in range(len(window)):
            for k in range(q + 1):
                expected[window[q], window[k]] += baseline[:, :, q - k]
    for i, pair in enumerate(pairs):
        q, k = divmod(pair, 256)
        assert atlas.count[i] == counts[q, k]
        np.testing.assert_allclose(atlas.mean[:, :, i], sums[q, k] / counts[q, k], rtol=0, atol=2e-6)
        np.testing.assert_allclose(atlas.lift[:, :, i], sums[q, k] / expected[q, k], rtol=1e-5)


def test_the_corpus_detector_scores_are_the_detectors_over_the_windows(folder):
    atlas = Atlas.load(folder, L, H)
    windows = [list(CORPUS[s : s + 64]) for s in range(0, len(CORPUS), 64)]
    want = detectors.text_scores(sharp_model(seed=7), windows)
    assert set(atlas.record["detectors"]) == set(want)
    for name, values in want.items():
        np.testing.assert_allclose(atlas.record["detectors"][name], values, atol=1e-6)


def test_the_seeds_question_over_http(served):
    out = get(served, "/v1/atlas", layer=1, head=0, query="H", key="i").json()
    atlas_answer = out
    assert out["query_text"] == "H" and out["key_text"] == "i" and out["count"] > 0
    counts, sums, _, _ = recompute(served)
    assert out["count"] == counts[ord("H"), ord("i")]
    assert abs(out["mean_weight"] - sums[ord("H"), ord("i")][1, 0] / counts[ord("H"), ord("i")]) < 2e-6
    assert 1 <= len(out["examples"]) <= 3
    for ex in atlas_answer["examples"]:
        assert CORPUS[ex["query_position"]] == ord("H") and CORPUS[ex["key_position"]] == ord("i")
        shown = bytes(ex["text_bytes"])
        assert CORPUS[ex["text_start"] : ex["text_start"] + len(shown)] == shown
        window = ex["query_position"] // 64 * 64
        text = CORPUS[window : window + 64].decode()
        r = httpx.post(f"{served.url}/v1/attention", json={"text": text, "format": "npy"}, timeout=60)
        maps = np.load(io.BytesIO(r.content))
        assert abs(ex["weight"] - maps[1, 0, ex["query_position"] - window, ex["key_position"] - window]) < 1e-6
    everywhere = get(served, "/v1/atlas", query="H", key="i").json()
    assert len(everywhere["heads"]) == L * H
    lifts = [h["lift"] for h in everywhere["heads"]]
    assert lifts == sorted(lifts, reverse=True)
    info = get(served, "/v1/model").json()  # the atlas made since the 404 above is found
    assert info["atlas"] == {"corpus": out["corpus"], "characters": 3} and info["atlas_note"] is None
    top = get(served, "/v1/atlas", layer=0, head=1, min_count=3).json()["top_pairs"]
    assert top and all(p["count"] >= 3 for p in top)
    grid = get(served, "/v1/atlas/map", layer=0, head=1).json()
    G = len(grid["groups"])
    assert len(grid["mean_weight"]) == G and sum(map(sum, grid["count"])) == sum(counts.values())


def test_the_character_atlas_is_the_byte_atlas_aggregated_by_hand(served, folder):
    atlas = Atlas.load(folder, L, H)
    for char in ("é", "猫", "🙂"):
        out = get(served, "/v1/atlas/character", char=char).json()
        b = char.encode()
        assert out["bytes"] == list(b) and out["count"] == 3
        assert len(out["pairs"]) == len(b) * (len(b) - 1) // 2
        for p in out["pairs"]:
            i = atlas.row(b[p["query_byte"]], b[p["key_byte"]])
            np.testing.assert_allclose(p["mean_weight"], atlas.mean[:, :, i], atol=1e-6)
    binding = get(served, "/v1/atlas/binding").json()
    assert binding["continuation_bytes"] == 3 * (1 + 2 + 3)
    by_hand = sum(
        atlas.mean[:, :, atlas.row(c.encode()[i], c.encode()[j])] * 3
        for c in ("é", "猫", "🙂")
        for i in range(len(c.encode()))
        for j in range(i)
    )
    np.testing.assert_allclose(binding["binding"], by_hand / 18, atol=1e-6)


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/v1/atlas", {"layer": 2, "head": 0, "query": "H", "key": "i"}, "layer"),
        ("/v1/atlas", {"layer": 0, "head": 5}, "head"),
        ("/v1/atlas", {"layer": 0, "head": 0, "query": "Hi", "key": "i"}, "query"),
        ("/v1/atlas", {"query": "H", "key": "0x1ff"}, "key"),
        ("/v1/atlas", {"query": "H"}, "key"),
        ("/v1/atlas", {"layer": 0}, "head"),
        ("/v1/atlas", {}, "query"),
        ("/v1/atlas/character", {"char": "a"}, "char"),
        ("/v1/atlas", {"query": "H", "key": "i", "model": "nope"}, "model"),
    ],
)
def test_bad_input_names_the_field(served, path, params, param):
    r = get(served, path, **params)
    assert_envelope(r, 404 if param == "model" else 400, param)


def test_the_atlas_is_checked_against_the_weights_served_not_the_file_now(tmp_path):
    """The server hashes the weights it loaded once, at start-up. It used to hash the checkpoint's file again for each
    atlas it loaded, and for every atlas route or /v1/detectors call on a model without an atlas (read whole, on the
    event loop for /v1/detectors: the soak's multilingual model): an atlas was then checked against the file as it is
    now. Made for the weights served, it answers after the file changed; made for the new file, it is refused."""
    path, other = tmp_path / "sharp", tmp_path / "other"
    checkpoint.save(path, sharp_model(seed=7), training={})
    checkpoint.save(other, sharp_model(seed=8), training={})
    data = tmp_path / "corpus.txt"
    data.write_bytes(CORPUS)
    assert atlas_main([str(path), "--data", str(data)]) == 0
    with running_server(path) as srv:
        assert get(srv, "/v1/atlas", query="H", key="i").status_code == 200
        shutil.copyfile(other / checkpoint.WEIGHTS, path / checkpoint.WEIGHTS)  # other weights on disk, not served
        later = (path / ATLAS_JSON).stat().st_mtime + 10
        os.utime(path / ATLAS_JSON, (later, later))  # a new version of the atlas's file: the server loads it again
        assert get(srv, "/v1/atlas", query="H", key="i").status_code == 200
        assert atlas_main([str(path), "--data", str(data)]) == 0  # an atlas of the weights on disk
        error = assert_envelope(get(srv, "/v1/atlas", query="H", key="i"), 404, "model")
        assert "other weights" in error["message"]


def test_a_character_the_corpus_never_has_is_a_404(served):
    assert_envelope(get(served, "/v1/atlas/character", char="ß"), 404, "char")


def test_an_atlas_json_cut_short_is_missing_not_an_error(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.save(path, sharp_model(seed=7), training={})
    (tmp_path / "corpus.txt").write_bytes(CORPUS)
    assert atlas_main([str(path), "--data", str(tmp_path / "corpus.txt")]) == 0
    (path / ATLAS_JSON).write_text((path / ATLAS_JSON).read_text()[:100])
    with pytest.raises(AtlasMissing, match="remake it: tinyllm-atlas"):  # so the server answers 404, not 500
        Atlas.load(path, L, H)


def test_tinyllm_atlas_is_the_same_command(folder, tmp_path, capsys):
    from server.cli import main as tinyllm

    with pytest.raises(SystemExit) as done:
        tinyllm(["atlas", str(folder), "--data", str(tmp_path / "missing.txt")])
    assert done.value.code == 2 and "no file" in capsys.readouterr().err


def test_an_interrupted_run_leaves_the_atlas_as_it_was(tmp_path, monkeypatch, capsys):
    from model import atlas as atlas_module

    path = tmp_path / "ckpt"
    checkpoint.save(path, sharp_model(seed=7), training={})
    data = tmp_path / "corpus.txt"
    data.write_bytes(CORPUS)
    real = atlas_module.add_window
    calls = []

    def interrupted(*args):  # Ctrl-C during the second window
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(atlas_module, "add_window", interrupted)
    assert atlas_main([str(path), "--data", str(data)]) == 130
    assert "nothing written" in capsys.readouterr().err
    assert sorted(p.name for p in path.iterdir()) == sorted(["config.json", "model.safetensors", "training.json"])
