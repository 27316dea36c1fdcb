"""The command line on the embedded digits dataset."""

import re

import pytest
from PIL import Image

from distillmem import DistilledSet
from distillmem.cli import main


@pytest.fixture(scope="module")
def distilled_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    out, png = folder / "digits.dm", folder / "digits.png"
    assert main(["distill", "--ipc", "3", "--quiet", "--out", str(out), "--png", str(png)]) == 0
    return out, png


def test_distill_writes_an_exact_set_and_a_picture(distilled_file):
    out, png = distilled_file
    distilled = DistilledSet.load(out)
    assert len(distilled) == 30 and distilled.n_classes == 10
    assert distilled.recovery_error < 1e-9
    with Image.open(png) as picture:
        assert picture.size[0] > 10 * 8  # ten class columns of enlarged 8x8 digits


def test_distill_prints_the_summary(tmp_path, capsys):
    assert main(["distill", "--ipc", "1", "--quiet", "--out", str(tmp_path / "a.dm"), "--png", str(tmp_path / "a.png")]) == 0
    text = capsys.readouterr().out
    original = re.search(r"original\s+test accuracy ([\d.]+)%", text)
    distilled = re.search(r"distilled\s+test accuracy ([\d.]+)%", text)
    assert original and distilled and original.group(1) == distilled.group(1)
    assert float(original.group(1)) > 85
    assert re.search(r"\|\|W_S - W\|\| / \|\|W\|\| = [\d.]+e-(1[0-9]|[2-9][0-9])", text)
    assert re.search(r"time\s+[\d.]+ s", text)


def test_eval_and_show(distilled_file, tmp_path, capsys):
    out, _ = distilled_file
    assert main(["eval", str(out)]) == 0
    assert re.search(r"test accuracy\s+[\d.]+% on digits", capsys.readouterr().out)
    picture = tmp_path / "grid.png"
    assert main(["show", str(out), "--out", str(picture), "--contrast", "minmax"]) == 0
    assert picture.stat().st_size > 0


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["eval", "missing.dm"], "no DistilledSet file"),
        (["distill", "--dataset", "mnist", "--quiet"], "root"),
        (["distill", "--ipc", "0", "--quiet"], "ipc must be"),
        (["distill", "--reg", "lots", "--quiet"], "expected a number"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(argv, phrase, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distillmem: error:") and phrase in err[0]


def test_corrupt_file_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "bad.dm"
    bad.write_bytes(b"not a distilled set at all")
    assert main(["show", str(bad)]) == 2
    assert "not a DistilledSet file" in capsys.readouterr().err
