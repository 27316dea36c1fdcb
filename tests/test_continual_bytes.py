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
