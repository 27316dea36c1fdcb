"""The command line on the embedded digits dataset."""

import dataclasses
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from distillmem.container import digest
from distillmem import DistilledSet
from distillmem.cli import main
from distillmem.data import load_dataset


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


# -- the summary and the picture say what was made ------------------------------------------------


def _accuracy(text: str, row: str) -> float:
    match = re.search(rf"^{row}\s+test accuracy ([\d.]+)%", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


def test_distill_prints_the_distilled_sets_own_accuracy(tmp_path, capsys, monkeypatch):
    # The distilled model equals the original, so both accuracies agree; make the reported
    # original differ to tell which number each row prints.
    import distillmem.protocol as protocol

    real_run = protocol.run_protocol

    def run_with_a_distinct_original(*args, **kwargs):
        result = real_run(*args, **kwargs)
        return dataclasses.replace(result, original_accuracy=result.original_accuracy / 2)

    monkeypatch.setattr(protocol, "run_protocol", run_with_a_distinct_original)
    out = tmp_path / "a.dm"
    assert main(["distill", "--ipc", "2", "--quiet", "--out", str(out), "--png", str(tmp_path / "a.png")]) == 0
    text = capsys.readouterr().out
    data = load_dataset("digits")
    refit = DistilledSet.load(out).fit_krr().score(data.x_test, data.y_test)
    assert _accuracy(text, "distilled") == round(100 * refit, 2)
    assert _accuracy(text, "original") == pytest.approx(round(100 * refit, 2) / 2, abs=0.01)


def _expected_pixels(images: np.ndarray, contrast: str) -> np.ndarray:
    """(m, H, W) uint8 grey pixels of (m, 1, H, W) images, computed here independently of viz."""
    values = images[:, 0]
    if contrast == "minmax":
        low = values.min(axis=(1, 2), keepdims=True)
        values = (values - low) / (values.max(axis=(1, 2), keepdims=True) - low)
    return np.round(np.clip(values, 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("init, contrast", [("real", "clip"), ("noise", "minmax")])
def test_distill_picture_uses_the_contrast_for_its_init(tmp_path, capsys, init, contrast):
    out, png = tmp_path / "a.dm", tmp_path / "a.png"
    argv = ["distill", "--ipc", "1", "--init", init, "--quiet", "--out", str(out), "--png", str(png)]
    assert main(argv) == 0
    assert f"{png} ({contrast} contrast)" in capsys.readouterr().out
    images = DistilledSet.load(out).images().numpy()
    with Image.open(png) as picture:
        pixels = np.asarray(picture)
    # Ten 8x8 digits side by side, enlarged 4x, each cell after a 2-pixel white gap: keep every 4th pixel.
    shown = np.stack([pixels[2:34:4, 2 + 34 * j : 34 + 34 * j : 4] for j in range(10)])
    assert np.array_equal(shown, _expected_pixels(images, contrast))
    other = "clip" if contrast == "minmax" else "minmax"
    assert not np.array_equal(shown, _expected_pixels(images, other))
    if contrast == "minmax":  # every image stretched over the full grey range
        assert all(cell.min() == 0 and cell.max() == 255 for cell in shown)


# -- outputs never overwrite inputs or each other, checked before any work ------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Make any distillation fail loudly: the errors under test must come before it."""
    import distillmem.protocol as protocol

    def forbidden(*args, **kwargs):
        raise AssertionError("the command started its work")

    monkeypatch.setattr(protocol, "run_protocol", forbidden)


def _one_line_error(capsys, phrase: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distillmem: error:"), err
    assert phrase in err[0], err[0]
    assert "Traceback" not in err[0] and "usage:" not in err[0]
    return err[0]


def test_show_refuses_to_overwrite_its_input(distilled_file, tmp_path, capsys):
    original = tmp_path / "s.dm"
    shutil.copy(distilled_file[0], original)
    before = original.read_bytes()
    assert main(["show", str(original), "--out", str(original)]) == 2
    _one_line_error(capsys, f"output {original} is the input")
    assert original.read_bytes() == before


def test_show_refuses_a_set_named_like_its_default_picture(distilled_file, tmp_path, capsys):
    disguised = tmp_path / "x.png"
    shutil.copy(distilled_file[0], disguised)
    before = disguised.read_bytes()
    assert main(["show", str(disguised)]) == 2
    _one_line_error(capsys, "is the input")
    assert disguised.read_bytes() == before and DistilledSet.load(disguised)


@pytest.mark.parametrize("link", [os.symlink, os.link])
def test_show_refuses_a_link_to_its_input(distilled_file, tmp_path, capsys, link):
    original = tmp_path / "s.dm"
    shutil.copy(distilled_file[0], original)
    before = original.read_bytes()
    alias = tmp_path / "alias.png"
    link(original, alias)
    assert main(["show", str(original), "--out", str(alias)]) == 2
    _one_line_error(capsys, "is the input")
    assert original.read_bytes() == before


def test_distill_refuses_one_path_for_both_outputs(tmp_path, capsys, no_work):
    same = tmp_path / "f"
    assert main(["distill", "--quiet", "--out", str(same), "--png", str(same)]) == 2
    _one_line_error(capsys, "are the same file")
    assert not same.exists()


def test_distill_refuses_outputs_that_are_links_to_each_other(tmp_path, capsys, no_work):
    out, link = tmp_path / "f.dm", tmp_path / "f.png"
    out.write_bytes(b"keep me")
    link.symlink_to(out)
    assert main(["distill", "--quiet", "--out", str(out), "--png", str(link)]) == 2
    _one_line_error(capsys, "are the same file")
    assert out.read_bytes() == b"keep me"


def test_distill_refuses_to_overwrite_its_data(tmp_path, capsys, no_work):
    data = tmp_path / "mnist.npz"
    data.write_bytes(b"the user's only copy")
    argv = ["distill", "--dataset", "mnist", "--data", str(data), "--quiet", "--out", str(data), "--png", str(tmp_path / "a.png")]
    assert main(argv) == 2
    _one_line_error(capsys, "is the input")
    assert data.read_bytes() == b"the user's only copy"


@pytest.mark.parametrize(
    "where, phrase",
    [
        (lambda tmp: tmp / "missing" / "a.dm", "does not exist"),
        (lambda tmp: tmp, "is a directory"),
    ],
    ids=["missing folder", "a folder"],
)
def test_distill_checks_its_outputs_before_working(tmp_path, capsys, no_work, where, phrase):
    assert main(["distill", "--quiet", "--out", str(where(tmp_path)), "--png", str(tmp_path / "a.png")]) == 2
    _one_line_error(capsys, phrase)


def test_distill_refuses_a_read_only_output_before_working(tmp_path, capsys, no_work):
    png = tmp_path / "a.png"
    png.write_bytes(b"keep me")
    png.chmod(0o444)
    assert main(["distill", "--quiet", "--out", str(tmp_path / "a.dm"), "--png", str(png)]) == 2
    _one_line_error(capsys, "is read-only")
    assert png.read_bytes() == b"keep me"


def test_show_into_an_unwritable_folder_is_one_line(distilled_file, tmp_path, capsys, monkeypatch):
    import distillmem.files as io_module

    real_access = os.access
    monkeypatch.setattr(io_module.os, "access", lambda p, m: Path(p) != tmp_path and real_access(p, m))
    assert main(["show", str(distilled_file[0]), "--out", str(tmp_path / "grid.png")]) == 2
    _one_line_error(capsys, "is not writable")


# -- every user error is one line and exit status 2 -------------------------------------------------


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["distill", "--ipc", "x"], "ipc must be an integer >= 1, got 'x'"),
        (["distill", "--ipc", "-1"], "ipc must be an integer >= 1"),
        (["distill", "--reg", "nan"], "expected a number >= 0 or 'auto', got 'nan'"),
        (["distill", "--reg", "-1"], "expected a number >= 0 or 'auto'"),
        (["distill", "--reg-s", "auto"], "expected a number >= 0 or 'bound'"),
        (["distill", "--feature-map", "cnn"], "invalid choice: 'cnn'"),
        (["distill", "--device", "abacus"], "abacus"),
        (["distill", "--nonsense"], "unrecognized arguments: --nonsense"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required"),
        (["show"], "the following arguments are required: file"),
    ],
)
def test_bad_arguments_are_one_line(argv, phrase, capsys, tmp_path, monkeypatch, no_work):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    _one_line_error(capsys, phrase)


def test_an_unreadable_file_is_one_line(distilled_file, capsys, monkeypatch):
    path = distilled_file[0]
    real_open = Path.open

    def denied(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    assert main(["eval", str(path)]) == 2
    _one_line_error(capsys, "Permission denied")


def test_a_crafted_set_is_one_line(distilled_file, tmp_path, capsys):
    with safe_open(str(distilled_file[0]), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    tensors["x"][0, 0] = float("nan")
    metadata["sha256"] = digest(tensors, metadata["meta"], ("x", "y", "labels"))
    crafted = tmp_path / "crafted.dm"
    save_file(tensors, str(crafted), metadata=metadata)
    for command in ("eval", "show"):
        assert main([command, str(crafted), *(["--out", str(tmp_path / "c.png")] if command == "show" else [])]) == 2
        _one_line_error(capsys, f"{crafted} is not a valid DistilledSet: x contains NaN or Inf")
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("content", ["text", "empty", "truncated zip", "bad CRC"])
def test_a_broken_npz_is_one_line(tmp_path, capsys, content):
    data = tmp_path / "mnist.npz"
    pixels = np.zeros((4, 28, 28), dtype=np.uint8)
    np.savez(data, x_train=pixels, y_train=np.arange(4), x_test=pixels, y_test=np.arange(4))
    raw = bytearray(data.read_bytes())
    if content == "text":
        raw = bytearray(b"x_train,y_train\n")
    elif content == "empty":  # numpy raises EOFError on it
        raw = bytearray()
    elif content == "truncated zip":
        raw = raw[: len(raw) // 2]
    else:
        raw[300] ^= 0xFF
    data.write_bytes(bytes(raw))
    argv = ["distill", "--dataset", "mnist", "--data", str(data), "--quiet", "--out", str(tmp_path / "a.dm"), "--png", str(tmp_path / "a.png")]
    assert main(argv) == 2
    line = _one_line_error(capsys, str(data))
    assert "pickle" not in line


def test_an_internal_error_is_not_disguised_as_a_user_error(tmp_path, monkeypatch):
    import distillmem.protocol as protocol

    def bug(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(protocol, "run_protocol", bug)
    with pytest.raises(KeyError):
        main(["distill", "--quiet", "--out", str(tmp_path / "a.dm"), "--png", str(tmp_path / "a.png")])


def test_existing_outputs_are_kept_unless_overwrite_is_given(distilled_file, tmp_path, capsys):
    out, png = distilled_file
    before = out.read_bytes(), png.read_bytes()
    # A second run to the same paths (say with other settings) must not replace what the first one saved.
    assert main(["distill", "--ipc", "1", "--quiet", "--out", str(out), "--png", str(tmp_path / "new.png")]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["show", str(out), "--out", str(png)]) == 2
    assert (out.read_bytes(), png.read_bytes()) == before
    copy, picture = tmp_path / "copy.dm", tmp_path / "copy.png"
    copy.write_bytes(before[0])
    picture.write_bytes(b"an older picture")
    assert main(["distill", "--ipc", "1", "--quiet", "--out", str(copy), "--png", str(picture), "--overwrite"]) == 0
    assert len(DistilledSet.load(copy)) == 10 and picture.read_bytes() != b"an older picture"
    assert main(["show", str(copy), "--out", str(picture), "--overwrite"]) == 0
