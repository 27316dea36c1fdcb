"""The experiments harness: the README's figures are the committed JSON's, and every script reports from it.

No measurement runs here except two seconds-long ones on the embedded digits;
nothing reads data outside the repository.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
SCRIPTS = sorted(p.stem for p in EXPERIMENTS.glob("*.py") if p.stem != "harness")
COMMITTED = sorted(p.stem for p in (EXPERIMENTS / "results").glob("*.json"))


@pytest.fixture(autouse=True)
def experiments_importable(monkeypatch):
    """Import the scripts as ``python experiments/<name>.py`` does: their folder first on sys.path."""
    monkeypatch.syspath_prepend(str(EXPERIMENTS))


def _module(name: str):
    return importlib.import_module(name)


def _payload(name: str) -> dict:
    return json.loads((EXPERIMENTS / "results" / f"{name}.json").read_text())


# -- the committed results --------------------------------------------------------------------


def test_readme_and_markdown_are_the_rendering_of_the_committed_json():
    assert _module("report").stale() == []


def test_every_readme_block_has_its_json_and_the_figures_it_shows():
    harness = _module("harness")
    blocks = harness.readme_blocks(harness.README.read_text())
    assert {"mnist_paper_tables", "fashion-mnist_paper_tables", "cifar_shape_fcnn_cpu", "scale",
            "kip_comparison", "conv_map", "memory_stream_mnist"} <= set(blocks)
    assert set(blocks) <= set(COMMITTED)
    # One figure per block, traced by hand from the JSON, so a renderer that drops or garbles it fails.
    runs = _payload("mnist_paper_tables")["runs"]
    worst = max(r["recovery_error"] for r in runs)
    assert f"over all runs is {harness.sci(worst)}." in blocks["mnist_paper_tables"]
    fcnn0 = next(r for r in runs if r["feature_map"] == "fcnn" and r["seed"] == 0 and r["ipc"] == 1)
    assert f"| FCNN | {100 * fcnn0['original_accuracy']:.2f} |" in blocks["mnist_paper_tables"]
    memory = _payload("memory_stream_mnist")
    final = memory["stream"]["frequent-directions, per task"]["final_acc"]
    assert f"reaches {100 * final:.2f}% test accuracy" in blocks["memory_stream_mnist"]
    scale = [r for r in _payload("scale")["runs"] if r["n"] == 10**6 and r["route"] == "memmap-u8"]
    assert f"| uint8 memmap | {scale[0]['seconds']:.1f} s | {scale[0]['peak_rss_gb']:.2f} GB |" in blocks["scale"]


def test_cifar_block_shows_the_stage_profile_when_the_json_has_one():
    cifar = _module("cifar_shape_timing")
    payload = _payload("cifar_shape_fcnn_cpu")
    payload.pop("stages", None)
    assert "stage by stage" not in cifar.readme(payload)  # a run that recorded no profile shows none
    payload["stages"] = dict(zip(cifar.STAGES, [2.04, 16.5, 0.31, 1.26]))
    assert "loading 2.0 s, original model (features, Gram, lambda) 16.5 s, distillation 0.3 s" in cifar.readme(payload)
    assert "| distillation | 0.31 |" in cifar.markdown(payload)


def test_continual_quickstart_figures_are_those_of_continual_split_digits():
    """The continual quickstart's prose is typed by hand: each figure it cites must be the JSON's."""
    readme = _module("harness").README.read_text()
    section = readme[readme.index("## Quickstart: continual learning"):readme.index("## Quickstart: federated learning")]
    section = " ".join(section.split())  # line breaks do not matter
    payload = _payload("continual_split_digits")

    def neural(method: str, mem: int) -> str:
        (row,) = [r for r in payload["neural"]["rows"] if r["method"] == method and r["mem"] == mem]
        return f"{100 * row['accuracy']:.2f}%"

    def distilled(reg: str, mem: int) -> str:
        return neural(f"distilled (identity, lambda={reg})", mem)

    real = "random real (ClassBalancedBuffer)"
    cited = [
        f"10 points in all gave {distilled('1', 10)} with λ = 1, {distilled('100', 10)} with λ = 100 and "
        f"{distilled('10000', 10)} with λ = 10⁴",
        f"at the same 10 points gave {neural(real, 10)}, and no replay {neural('naive, no replay', 0)}",
        f"At 50 points they gave {distilled('10000', 50)} against {neural(real, 50)} for random real exemplars; "
        f"at 100 points, {distilled('10000', 100)} against {neural(real, 100)}",
    ]
    shares = [100 * r["distill_seconds"] / r["train_seconds"] for r in payload["neural"]["rows"] if r["method"].endswith("=10000)")]
    cited.append(f"Distilling took {min(shares):.0f} to {max(shares):.0f}% of the training time")
    exact = [r for r in payload["krr"]["rows"] if r["method"] == "exact"]
    cited.append(f"weight error of at most {_module('harness').sci(max(r['weight_error'] for r in exact))}")
    cited.append(f"({100 * exact[-1]['accuracy']:.2f}% after the last one) and {exact[0]['bytes']:,} bytes")
    assert {r["bytes"] for r in exact} == {exact[0]["bytes"]}  # "throughout"
    for figure in cited:
        assert figure in section, figure


def test_stale_finds_a_hand_edited_block_an_edited_json_and_a_missing_markdown(tmp_path):
    report, harness = _module("report"), _module("harness")
    results = tmp_path / "results"
    shutil.copytree(EXPERIMENTS / "results", results)
    readme = tmp_path / "README.md"
    text = harness.README.read_text()
    block = harness.readme_blocks(text)["scale"]
    readme.write_text(harness.replace_readme_block(text, "scale", block.replace(" s |", " s (typed) |", 1)))
    payload = json.loads((results / "kip_comparison.json").read_text())
    payload["runs"][0]["test_accuracy"] = 0.5
    (results / "kip_comparison.json").write_text(json.dumps(payload))
    (results / "conv_map.md").unlink()
    found = report.stale(results, readme)
    assert any("README block scale" in line for line in found)
    assert any("kip_comparison.md" in line for line in found)
    assert any("README block kip_comparison" in line for line in found)
    assert any("conv_map.md" in line for line in found)
    (results / "scale.json").unlink()
    assert "README block scale has no scale.json" in report.stale(results, readme)
    with pytest.raises(ValueError, match="'os'"):
        report.script({"script": "os"})
    (results / "by_hand.json").write_text('{"figure": 1}')
    with pytest.raises(ValueError, match=r"by_hand\.json was not written by the harness"):
        report.stale(results, readme)


# -- every script ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        _module(name).main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--out" in out and ("--report-only" in out or name == "report")


@pytest.mark.parametrize("name", COMMITTED)
def test_report_only_rebuilds_the_markdown_from_the_json_alone(name, tmp_path, capsys):
    harness = _module("harness")
    payload = _payload(name)
    shutil.copy(EXPERIMENTS / "results" / f"{name}.json", tmp_path)
    readme_before = harness.README.read_bytes()
    assert _module(payload["script"]).main([*payload["argv"], "--report-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / f"{name}.md").read_text() == (EXPERIMENTS / "results" / f"{name}.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{name}.json", f"{name}.md"])
    assert harness.README.read_bytes() == readme_before  # only experiments/results feeds the README


def test_report_only_without_json_names_the_missing_file(tmp_path):
    with pytest.raises(SystemExit, match=r"scale\.json does not exist"):
        _module("scale").main(["--report-only", "--out", str(tmp_path)])


@pytest.mark.parametrize("argv", [["--dataset", "mnist"], ["--dataset", "mnist", "--data", "no/such/mnist.npz"]])
def test_measuring_without_data_is_a_usage_error(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _module("paper_tables").main([*argv, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "--data" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_scripts_run_from_a_fresh_interpreter_outside_the_repository(tmp_path):
    done = subprocess.run([sys.executable, str(EXPERIMENTS / "report.py"), "--check"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "up to date" in done.stdout


# -- measuring end to end on the embedded digits --------------------------------------------------------


def test_memory_stream_on_digits_records_then_reports_the_same_markdown(tmp_path, capsys):
    memory_stream = _module("memory_stream")
    argv = ["--dataset", "digits", "--budget", "20", "--online-batch", "500", "--seeds", "0", "1", "--out", str(tmp_path)]
    assert memory_stream.main(argv) == 0
    payload = json.loads((tmp_path / "memory_stream_digits.json").read_text())
    assert payload["script"] == "memory_stream" and payload["argv"] == argv
    assert payload["command"].startswith("python experiments/memory_stream.py --dataset digits")
    assert "CPU cores" in payload["machine"] and "torch" in payload["machine"]
    assert payload["exact_memory"]["weight_err_vs_krr"] < 1e-9  # 64 points hold all of the digits exactly
    assert all(run["max_points_held"] <= 20 for run in payload["stream"].values())
    measured = (tmp_path / "memory_stream_digits.md").read_text()
    (tmp_path / "memory_stream_digits.md").unlink()
    assert memory_stream.main([*argv, "--report-only"]) == 0
    assert (tmp_path / "memory_stream_digits.md").read_text() == measured


def test_conv_map_on_digits_is_exact(tmp_path, capsys):
    argv = ["--data", "digits", "--maps", "conv-k2", "--ipcs", "1", "--inits", "noise", "--out", str(tmp_path)]
    assert _module("conv_map").main(argv) == 0
    (row,) = json.loads((tmp_path / "conv_map.json").read_text())["runs"]
    assert row["dataset"] == "digits" and row["p"] == 64
    assert row["recovery_error"] < 1e-8 and row["agreement"] == 1.0


# -- the harness ------------------------------------------------------------------------------------


def test_command_line_hides_the_folders_of_data_paths_only():
    harness = _module("harness")
    shown = harness.command_line("x.py", ["--data", "/home/me/data/mnist.npz", "--seeds", "0", "1"])
    assert shown == "python experiments/x.py --data path/to/mnist.npz --seeds 0 1"
    shown = harness.command_line("x.py", ["--data", "mnist=/a/mnist.npz", "fashion-mnist=/b/fmnist", "digits", "--out", "/tmp/o"])
    assert shown == "python experiments/x.py --data mnist=path/to/mnist.npz fashion-mnist=path/to/fmnist digits --out /tmp/o"
    assert harness.command_line("x.py", ["--data=/a/b.npz", "--ipcs", "1"]) == "python experiments/x.py --data=path/to/b.npz --ipcs 1"


def test_readme_blocks_are_replaced_one_at_a_time():
    harness = _module("harness")
    text = "a\n<!-- results: one -->\nold\n<!-- /results -->\nb\n<!-- results: two -->\nkeep\n<!-- /results -->\n"
    assert harness.readme_blocks(text) == {"one": "old\n", "two": "keep\n"}
    new = harness.replace_readme_block(text, "one", "new")
    assert harness.readme_blocks(new) == {"one": "new\n", "two": "keep\n"}
    assert new.startswith("a\n") and "\nb\n" in new
    with pytest.raises(ValueError, match="'three'"):
        harness.replace_readme_block(text, "three", "x")
    with pytest.raises(ValueError, match="twice"):
        harness.readme_blocks(text + "<!-- results: one -->\n<!-- /results -->\n")


def test_report_records_the_run_and_publishes_to_the_readme_only_from_the_results_folder(tmp_path, monkeypatch):
    harness = _module("harness")
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- results: demo -->\nold\n<!-- /results -->\n")
    monkeypatch.setattr(harness, "README", readme)
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    with pytest.raises(ValueError, match="command"):
        harness.Report("demo.py", "demo", tmp_path / "results", []).record({"command": "typed by hand"})
    elsewhere = harness.Report("demo.py", "demo", tmp_path / "elsewhere", ["--data", "/x/y.npz"])
    payload = elsewhere.record({"value": 1})
    assert elsewhere.load() == payload
    assert payload["command"] == "python experiments/demo.py --data path/to/y.npz" and payload["value"] == 1
    elsewhere.publish("# md\n", "new\n")
    assert "old" in readme.read_text()
    harness.Report("demo.py", "demo", tmp_path / "results", []).publish("# md\n", "new\n")
    assert harness.readme_blocks(readme.read_text()) == {"demo": "new\n"}
    assert (tmp_path / "results" / "demo.md").read_text() == "# md\n"


def test_an_unwritable_out_stops_the_run_before_measuring(tmp_path):
    harness = _module("harness")
    out = tmp_path / "results"
    out.mkdir()
    (out / "demo.json").mkdir()  # a folder where the JSON must go
    measured = []
    with pytest.raises(IsADirectoryError, match="demo.json"):
        harness.Report("demo.py", "demo", out, []).run(False, lambda: measured.append(1) or {}, str)
    assert measured == []


def test_accuracy_and_formats():
    harness = _module("harness")
    assert harness.accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 0])) == 0.5
    with pytest.raises(ValueError, match="shape"):
        harness.accuracy(torch.tensor([1, 2]), torch.tensor([[1, 2]]))
    assert harness.sci(3.8123e-9) == "3.8e-9" and harness.sci(2.0e10) == "2.0e10"
    assert harness.span([1.04, 1.36], ".1f") == "1.0–1.4" and harness.span([2.01, 1.98], ".1f") == "2.0"
    assert harness.same_share(1.0) == "100%" and harness.same_share(0.9995) == "at least 99.95%"


def test_continual_bytes_on_digits_is_exact_and_counts_bytes(tmp_path, capsys):
    argv = ["--dataset", "digits", "--parts", "krr", "--points", "20", "--krr-methods", "moments", "random exemplars",
            "--out", str(tmp_path)]
    assert _module("continual_bytes").main(argv) == 0
    payload = json.loads((tmp_path / "continual_bytes_digits_krr_fcnn.json").read_text())
    (run,) = payload["seeds"]
    assert all(s["weight_error"] < 1e-9 and s["accuracy"] == s["joint_accuracy"] for s in run["exact"])
    assert {s["bytes"] for s in run["exact"]} == {64 * (64 + 10) * 8}  # (p, p + k) float64 throughout
    rows = {(r["method"], r.get("equal", "")): r for r in run["rows"]}
    assert rows[("moments", "")]["bytes"] == 20 * (64 + 10) * 8 and rows[("moments", "")]["points"] == 20
    by_bytes = rows[("random exemplars", "bytes")]  # as many float32 images + int64 labels as fit, class-balanced
    assert by_bytes["points"] == (20 * 74 * 8 // (4 * 64 + 8)) // 10 * 10
    assert by_bytes["bytes"] == by_bytes["points"] * (4 * 64 + 8)
    assert (tmp_path / "continual_bytes_digits.png").is_file()
