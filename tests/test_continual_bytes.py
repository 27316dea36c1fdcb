"""experiments/continual_bytes.py on split digits: the corrected sketch's budget and merging runs into one result."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

pytest.importorskip("avalanche")
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:No loggers specified:UserWarning"),
]

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture
def continual_bytes(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    return importlib.import_module("continual_bytes")


def run(module, out: Path, *extra: str) -> dict:
    argv = ["--dataset", "digits", "--parts", "krr", "--points", "20", "--joint", "last", "--out", str(out), *extra]
    assert module.main(argv) == 0
    return json.loads((out / "continual_bytes_digits_krr_fcnn.json").read_text())


def test_merge_keeps_rows_it_did_not_measure_and_counts_the_correction(continual_bytes, tmp_path, capsys):
    with pytest.raises(SystemExit, match="does not exist"):
        run(continual_bytes, tmp_path, "--merge", "--krr-methods", "moments")
    first = run(continual_bytes, tmp_path, "--krr-methods", "moments", "sketch")
    merged = run(continual_bytes, tmp_path, "--merge", "--seeds", "0", "1", "--krr-methods", "sketch + correction",
                 "sketch")
    assert [r["seed"] for r in merged["seeds"]] == [0, 1]
    seed0, seed1 = ({r["method"]: r for r in run_["rows"]} for run_ in merged["seeds"])
    assert set(seed0) == {"moments", "sketch", "sketch + correction"} and set(seed1) == {"sketch", "sketch + correction"}
    assert seed0["moments"] == {r["method"]: r for r in first["seeds"][0]["rows"]}["moments"]
    # 10 eigen-rows and k = 10 correction rows make the 20 points; bytes add R (k p), the diagonal and one number.
    corrected = seed1["sketch + correction"]
    assert corrected["points"] == 20 and corrected["bytes"] == (20 * 64 + 10 * 64 + 64 + 1) * 8
    assert seed1["sketch"]["bytes"] == corrected["bytes"]
    assert len(merged["earlier_commands"]) == 1 and "--merge" in merged["command"]
    assert "--merge" in (tmp_path / "continual_bytes_digits_krr_fcnn.md").read_text()
    with pytest.raises(SystemExit, match="other settings: reg"):
        run(continual_bytes, tmp_path, "--merge", "--reg", "2", "--krr-methods", "sketch")


def neural(module, out: Path, model: str, *extra: str) -> dict:
    argv = ["--dataset", "digits", "--parts", "neural", "--model", model, "--ipcs", "1", "--out", str(out),
            "--neural-methods", "naive", "herding exemplars", "distilled, head on 50 per class", *extra]
    assert module.main(argv) == 0
    return json.loads((out / f"continual_bytes_digits_neural{'_cnn' if model == 'cnn' else ''}.json").read_text())


def test_the_cnn_runs_every_replay_method_into_its_own_result(continual_bytes, tmp_path, capsys):
    cnn = neural(continual_bytes, tmp_path, "cnn")
    rows = {r["method"]: r for r in cnn["seeds"][0]["rows"]}
    assert set(rows) == {"naive", "herding exemplars", "distilled, head on 50 per class"}
    # Herding read the CNN's hidden layer; the distilled points kept the (1, 8, 8) input shape the CNN needs.
    assert rows["herding exemplars"]["points"] == rows["distilled, head on 50 per class"]["points"] == 10
    assert rows["distilled, head on 50 per class"]["bytes"] > 0
    built = continual_bytes.CNN((1, 8, 8), 10, 128)
    assert cnn["args"]["hidden"] == 128 and cnn["parameters"] == sum(p.numel() for p in built.parameters())
    md = (tmp_path / "continual_bytes_digits_neural_cnn.md").read_text()
    assert "CNN on 1×8×8 inputs: conv 5×5 1→16, ReLU, max-pool 2, conv 5×5 16→32" in md and "MLP" not in md
    # The MLP keeps its own file and name; a result recorded before --model existed merges as the MLP's.
    mlp = neural(continual_bytes, tmp_path, "mlp")
    assert mlp["args"]["hidden"] == 256 and "MLP 64-256-10" in (tmp_path / "continual_bytes_digits_neural.md").read_text()
    del mlp["args"]["model"]
    (tmp_path / "continual_bytes_digits_neural.json").write_text(json.dumps(mlp))
    merged = neural(continual_bytes, tmp_path, "mlp", "--merge", "--seeds", "1")
    assert [r["seed"] for r in merged["seeds"]] == [0, 1]
    assert json.loads((tmp_path / "continual_bytes_digits_neural_cnn.json").read_text()) == cnn
    with pytest.raises(ValueError, match=r"\(784,\)"):
        continual_bytes.CNN((784,), 10, 128)
