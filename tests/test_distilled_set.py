"""Tests for distillmem.DistilledSet: construction, images, and the safetensors file format."""

from __future__ import annotations

import functools
import json
import os
import stat
import struct
import tracemalloc

import numpy as np
import pytest
import torch
from conftest import _problem, _rel_err
from safetensors import safe_open
from safetensors.torch import save_file

import distillmem.distilled_set as distilled_set_module
from distillmem.container import digest
from distillmem import DistilledSet, distill
from distillmem.features import Identity, RandomFCNN, RandomFourier

MEAN, STD = (0.5, 0.25), (0.1, 0.2)


@functools.lru_cache(maxsize=None)
def make_set(kind: str) -> DistilledSet:
    x, y = _problem(n=300)
    if kind == "images":
        return distill(
            x.reshape(300, 2, 4, 5), y, ipc=2, feature_map=RandomFCNN(40, seed=1), reg=1e-3,
            init="real", dataset="toy", mean=MEAN, std=STD,
        )
    if kind == "rff":
        return distill(x, y, ipc=3, feature_map=RandomFourier(40, 20, sigma=4.0, seed=2), reg=1e-3, reg_s="bound")
    if kind == "identity":
        return distill(x, y, ipc=1, feature_map=Identity(), reg=1e-3)
    raise KeyError(kind)


KINDS = ["images", "rff", "identity"]


def saved(tmp_path, kind: str = "images"):
    path = tmp_path / f"{kind}.safetensors"
    make_set(kind).save(path)
    return path


def tensor_data_offset(data: bytes) -> int:
    (length,) = struct.unpack("<Q", data[:8])
    return 8 + length


# -- round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_tensors_are_bit_identical(tmp_path, kind):
    original = make_set(kind)
    loaded = DistilledSet.load(saved(tmp_path, kind))
    for name in ("x", "y", "labels"):
        a, b = getattr(original, name), getattr(loaded, name)
        assert b.dtype == a.dtype and torch.equal(a, b), name


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_metadata_is_equal(tmp_path, kind):
    original = make_set(kind)
    loaded = DistilledSet.load(saved(tmp_path, kind))
    assert loaded.feature_map_spec == original.feature_map_spec
    assert loaded.reg == original.reg
    assert loaded.image_shape == original.image_shape
    assert loaded.mean == original.mean
    assert loaded.std == original.std
    assert loaded.provenance == original.provenance


def test_round_trip_keeps_image_fields(tmp_path):
    loaded = DistilledSet.load(saved(tmp_path, "images"))
    assert (loaded.image_shape, loaded.mean, loaded.std) == ((2, 4, 5), MEAN, STD)
    assert loaded.provenance.dataset == "toy"


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_fit_krr_gives_the_same_weights(tmp_path, kind):
    original = make_set(kind)
    loaded = DistilledSet.load(saved(tmp_path, kind))
    assert torch.equal(loaded.fit_krr().weights_, original.fit_krr().weights_)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_feature_map_is_identical(tmp_path, kind):
    loaded = DistilledSet.load(saved(tmp_path, kind))
    x, _ = _problem(n=20, seed=3)
    assert torch.equal(loaded.feature_map()(x), make_set(kind).feature_map()(x))


def test_save_returns_the_path(tmp_path):
    path = tmp_path / "set.safetensors"
    assert make_set("identity").save(str(path)) == path


def test_file_is_plain_safetensors(tmp_path):
    path = saved(tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()) == {"x", "y", "labels"}
        assert handle.metadata()["format"] == "distillmem.DistilledSet"
        assert torch.equal(handle.get_tensor("x"), make_set("images").x)


def test_numpy_integer_ipc_set_round_trips(tmp_path):
    # distill accepts ipc as a numpy integer; the set it makes must still be saveable.
    x, y = _problem(n=300)
    syn = distill(x, y, ipc=np.int64(2), feature_map=Identity(), reg=1e-3)
    path = tmp_path / "set.safetensors"
    syn.save(path)
    loaded = DistilledSet.load(path)
    assert loaded.provenance.ipc == 2
    assert torch.equal(loaded.x, syn.x)


# -- atomic writes --------------------------------------------------------------------------


def test_save_leaves_no_temporary_files(tmp_path):
    saved(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.safetensors"]


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "set.safetensors"
    make_set("identity").save(path)
    make_set("rff").save(path)
    loaded = DistilledSet.load(path)
    assert torch.equal(loaded.x, make_set("rff").x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.safetensors"]


def test_failed_save_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "set.safetensors"
    make_set("identity").save(path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("distillmem.files.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        make_set("rff").save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.safetensors"]


def test_save_into_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_set("identity").save(tmp_path / "missing" / "set.safetensors")


def test_save_onto_a_directory_raises(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        make_set("identity").save(tmp_path)


# -- corrupt and foreign files ------------------------------------------------------------------


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no DistilledSet file"):
        DistilledSet.load(tmp_path / "nothing.safetensors")


def test_truncated_tensor_data_raises(tmp_path):
    path = saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        DistilledSet.load(path)


def test_truncated_header_raises(tmp_path):
    path = saved(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or not a DistilledSet file"):
        DistilledSet.load(path)


@pytest.mark.parametrize("where", [0.1, 0.5, 0.99])
def test_flipped_byte_in_tensor_data_raises(tmp_path, where):
    path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    start = tensor_data_offset(bytes(data))
    position = start + int(where * (len(data) - start - 1))
    data[position] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum does not match"):
        DistilledSet.load(path)


def test_flipped_byte_in_metadata_raises(tmp_path):
    # One byte changes the feature map's seed; the JSON stays valid, so only a checksum
    # over the metadata can tell. Loading it would silently give another model.
    path = saved(tmp_path)
    data = path.read_bytes()
    needle = b'\\"seed\\": 1'
    assert data.count(needle) == 1
    path.write_bytes(data.replace(needle, b'\\"seed\\": 7'))
    with pytest.raises(ValueError, match="corrupt"):
        DistilledSet.load(path)


def test_random_bytes_raise(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="not a DistilledSet file"):
        DistilledSet.load(path)


def test_empty_file_raises(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="only 0 bytes long"):
        DistilledSet.load(path)


def test_header_that_is_not_json_raises(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 6) + b"{nope}" + b"\0" * 16)
    with pytest.raises(ValueError, match="header is not valid JSON"):
        DistilledSet.load(path)


def test_foreign_safetensors_without_metadata_raises(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(3, 4), "y": torch.ones(3, 2)}, str(path))
    with pytest.raises(ValueError, match="has no distillmem metadata"):
        DistilledSet.load(path)


def test_foreign_safetensors_with_other_metadata_raises(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(3, 4)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="is a safetensors file but not a distillmem DistilledSet"):
        DistilledSet.load(path)


def test_wrong_format_version_raises(tmp_path, monkeypatch):
    path = tmp_path / "future.safetensors"
    monkeypatch.setattr(distilled_set_module, "FORMAT_VERSION", "999")
    make_set("identity").save(path)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="format version '999'"):
        DistilledSet.load(path)


def test_missing_tensor_raises(tmp_path):
    path = saved(tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {"x": handle.get_tensor("x"), "y": handle.get_tensor("y")}
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ValueError, match=r"holds tensors \['x', 'y'\]"):
        DistilledSet.load(path)


def test_malformed_metadata_raises(tmp_path):
    path = saved(tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    metadata["meta"] = '{"reg": 0.0}'  # valid JSON, fields missing
    metadata["sha256"] = digest(tensors, metadata["meta"], ("x", "y", "labels"))  # a consistent checksum
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ValueError, match="malformed DistilledSet metadata"):
        DistilledSet.load(path)


# -- crafted files: a consistent checksum, hostile contents ------------------------------------------


def craft(path, change):
    """Rewrite the set at ``path`` after ``change(tensors, meta)`` edits it, with a matching checksum."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    meta = json.loads(metadata["meta"])
    change(tensors, meta)
    metadata["meta"] = json.dumps(meta)
    metadata["sha256"] = digest(tensors, metadata["meta"], ("x", "y", "labels"))
    save_file(tensors, str(path), metadata=metadata)
    return path


def _set(where, key, value):
    return lambda tensors, meta: where(tensors, meta).__setitem__(key, value)


_META = lambda tensors, meta: meta  # noqa: E731
_TENSORS = lambda tensors, meta: tensors  # noqa: E731
_SPEC = lambda tensors, meta: meta["feature_map_spec"]  # noqa: E731
_PARAMS = lambda tensors, meta: meta["feature_map_spec"]["params"]  # noqa: E731

CRAFTED = {
    "float32 points": (lambda t, m: t.update(x=t["x"].float()), "x must be torch.float64"),
    "float32 targets": (lambda t, m: t.update(y=t["y"].float()), "y must be torch.float64"),
    "float64 labels": (lambda t, m: t.update(labels=t["labels"].double()), "labels must be torch.int64"),
    "int32 labels": (lambda t, m: t.update(labels=t["labels"].int()), "labels must be torch.int64"),
    "NaN point": (lambda t, m: t["x"].__setitem__((1, 2), float("nan")), "x contains NaN or Inf"),
    "infinite target": (lambda t, m: t["y"].__setitem__((0, 0), float("-inf")), "y contains NaN or Inf"),
    "label out of range": (lambda t, m: t["labels"].__setitem__(0, 4), r"labels must lie in \[0, 4\)"),
    "negative label": (lambda t, m: t["labels"].__setitem__(0, -3), r"labels must lie in \[0, 4\)"),
    "labels too short": (lambda t, m: t.update(labels=t["labels"][:-1]), "disagree on the number of points"),
    "1-D points": (lambda t, m: t.update(x=t["x"].reshape(-1)), r"needs x \(m, d\)"),
    "negative reg": (_set(_META, "reg", -1.0), "reg must be >= 0"),
    "infinite reg": (_set(_META, "reg", float("inf")), "reg must be a finite number"),
    "reg as text": (_set(_META, "reg", "0.001"), "reg must be a real number"),
    "reg as bool": (_set(_META, "reg", True), "reg must be a real number"),
    "image_shape as text": (_set(_META, "image_shape", "2x4x5"), "image_shape must be a list or null"),
    "image_shape of floats": (_set(_META, "image_shape", [2, 4, 5.0]), "image_shape entry must be an integer"),
    "image_shape mismatch": (_set(_META, "image_shape", [2, 4, 4]), r"image_shape \(2, 4, 4\) does not match 40"),
    "mean of text": (_set(_META, "mean", ["0.5", "0.25"]), "mean must hold numbers"),
    "mean too long": (_set(_META, "mean", [0.5, 0.25, 0.1]), "mean has 3 values for image_shape"),
    "zero std": (_set(_META, "std", [0.1, 0.0]), "std must be positive"),
    "meta unknown field": (_set(_META, "extra", 1), r"unknown fields \['extra'\]"),
    "spec as list": (_set(_META, "feature_map_spec", ["fcnn"]), "feature_map_spec must be an object"),
    "spec unknown map": (_set(_SPEC, "name", "evil"), "unknown feature map 'evil'"),
    "spec params as list": (_set(_SPEC, "params", []), "feature_map_spec.params must be an object"),
    "spec seed as text": (_set(_SPEC, "seed", "1"), "feature_map_spec.seed must be an integer"),
    "spec seed too large": (_set(_SPEC, "seed", 2**70), "out of the 64-bit range"),
    "spec 1e9 wide": (_set(_PARAMS, "widths", [10**9]), "feature_map_spec.params.widths = 1000000000 exceeds 640"),
    "spec zero width": (_set(_PARAMS, "widths", [0]), "feature_map_spec.params.widths must be >= 1"),
    "spec float width": (_set(_PARAMS, "widths", [40.5]), "feature_map_spec.params.widths must be an integer"),
    "spec wrong input width": (_set(_PARAMS, "in_features", 41), "in_features = 41 but the points have 40 features"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_file_fails_at_load_naming_file_and_field(tmp_path, case):
    change, phrase = CRAFTED[case]
    path = craft(saved(tmp_path), change)
    with pytest.raises(ValueError, match=phrase) as info:
        DistilledSet.load(path)
    assert str(path) in str(info.value)


def test_crafted_rff_spec_of_huge_output_width_fails_at_load(tmp_path):
    path = craft(saved(tmp_path, "rff"), _set(_PARAMS, "out_features", 10**9))
    with pytest.raises(ValueError, match="out_features = 1000000000 exceeds"):
        DistilledSet.load(path)


@pytest.mark.parametrize("meta_json", ["[1, 2]", "{not json"])
def test_crafted_meta_that_is_not_an_object_raises(tmp_path, meta_json):
    path = saved(tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    metadata["meta"] = meta_json
    metadata["sha256"] = digest(tensors, meta_json, ("x", "y", "labels"))
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ValueError, match=f"{path} has malformed DistilledSet metadata"):
        DistilledSet.load(path)


def test_widest_legitimate_spec_loads(tmp_path):
    # The bound is generous: a map up to MAX_WIDTH_RATIO times the input width still loads.
    limit = distilled_set_module.MAX_WIDTH_RATIO * 40
    path = craft(saved(tmp_path, "rff"), _set(_PARAMS, "out_features", limit))
    assert DistilledSet.load(path).feature_map_spec["params"]["out_features"] == limit


def _sparse_file(path, size: int, head: bytes):
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)
    return path


def _peak_bytes_while(action) -> int:
    tracemalloc.start()
    try:
        action()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_large_foreign_file_fails_after_reading_its_header_only(tmp_path):
    header = json.dumps({"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [2**26], "data_offsets": [0, 2**28]}})
    head = struct.pack("<Q", len(header)) + header.encode()
    path = _sparse_file(tmp_path / "big.safetensors", len(head) + 2**28, head)

    def load():
        with pytest.raises(ValueError, match="not a distillmem DistilledSet"):
            DistilledSet.load(path)

    assert _peak_bytes_while(load) < 2**22  # far below the 256 MiB file


def test_header_length_beyond_the_file_fails_before_reading_it(tmp_path):
    path = _sparse_file(tmp_path / "big.safetensors", 2**28, struct.pack("<Q", 2**40))

    def load():
        with pytest.raises(ValueError, match=f"header claims {2**40} bytes of {2**28}"):
            DistilledSet.load(path)

    assert _peak_bytes_while(load) < 2**22


def test_oversized_header_fails_before_reading_it(tmp_path):
    path = _sparse_file(tmp_path / "big.safetensors", 2**28, struct.pack("<Q", 2**27))

    def load():
        with pytest.raises(ValueError, match=f"header claims {2**27} bytes, safetensors allows 100000000"):
            DistilledSet.load(path)

    assert _peak_bytes_while(load) < 2**22


# -- images -------------------------------------------------------------------------------------


def test_images_have_image_shape():
    syn = make_set("images")
    assert syn.images().shape == (len(syn), 2, 4, 5)


def test_images_are_unnormalised_per_channel():
    syn = make_set("images")
    flat = syn.x.reshape(len(syn), 2, 20)
    expected = torch.stack([flat[:, c] * STD[c] + MEAN[c] for c in range(2)], dim=1).reshape(len(syn), 2, 4, 5)
    torch.testing.assert_close(syn.images(), expected, rtol=1e-15, atol=1e-15)


def test_images_without_statistics_are_the_points():
    syn = make_set("images")
    plain = DistilledSet(syn.x, syn.y, syn.labels, syn.feature_map_spec, syn.reg, image_shape=(2, 4, 5))
    assert torch.equal(plain.images(), syn.x.reshape(len(syn), 2, 4, 5))


def test_images_without_image_shape_raise():
    with pytest.raises(ValueError, match="has no image_shape"):
        make_set("rff").images()


# -- construction ---------------------------------------------------------------------------------


def components(m: int = 6, d: int = 40, k: int = 3):
    x = torch.zeros(m, d, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(m) % k, k).to(torch.float64)
    return x, y, torch.arange(m) % k, Identity().spec()


def test_basic_properties():
    syn = make_set("rff")
    assert len(syn) == 12
    assert syn.n_classes == 4
    assert syn.recovery_error == syn.provenance.recovery_error


def test_feature_map_is_a_fresh_copy():
    syn = make_set("images")
    assert syn.feature_map() is not syn.feature_map()
    assert syn.feature_map().spec() == syn.feature_map_spec


def test_fit_krr_recovers_the_original_weights():
    x, y = _problem(n=300)
    syn = make_set("images")
    teacher = RandomFCNN(40, seed=1)
    features = teacher(x)
    targets = torch.nn.functional.one_hot(y).to(torch.float64)
    expected = torch.linalg.solve(features.T @ features + 1e-3 * torch.eye(40, dtype=torch.float64), features.T @ targets).T
    assert _rel_err(syn.fit_krr().weights_, expected) < 1e-9


def test_mismatched_y_rows_raise():
    x, y, labels, spec = components()
    with pytest.raises(ValueError, match="disagree on the number of points: 6, 5, 6"):
        DistilledSet(x, y[:5], labels, spec, 0.0)


def test_mismatched_labels_raise():
    x, y, labels, spec = components()
    with pytest.raises(ValueError, match="disagree on the number of points: 6, 6, 4"):
        DistilledSet(x, y, labels[:4], spec, 0.0)


@pytest.mark.parametrize("which", ["x", "y", "labels"])
def test_wrong_dimensionality_raises(which):
    x, y, labels, spec = components()
    parts = {"x": x, "y": y, "labels": labels}
    parts[which] = parts[which].reshape(-1) if which != "labels" else labels[:, None]
    with pytest.raises(ValueError, match=r"DistilledSet needs x \(m, d\), y \(m, k\), labels \(m,\)"):
        DistilledSet(parts["x"], parts["y"], parts["labels"], spec, 0.0)


def test_image_shape_not_matching_width_raises():
    x, y, labels, spec = components()
    with pytest.raises(ValueError, match=r"image_shape \(1, 6, 6\) does not match 40 features"):
        DistilledSet(x, y, labels, spec, 0.0, image_shape=(1, 6, 6))


@pytest.mark.parametrize(
    "reg, error, phrase",
    [
        (-1e-3, ValueError, "reg must be >= 0"),
        (float("nan"), ValueError, "reg must be a finite number"),
        (float("inf"), ValueError, "reg must be a finite number"),
        (True, TypeError, "reg must be a real number"),
        ("0.1", TypeError, "reg must be a real number"),
    ],
)
def test_bad_reg_raises(reg, error, phrase):
    x, y, labels, spec = components()
    with pytest.raises(error, match=phrase):
        DistilledSet(x, y, labels, spec, reg)


def test_numpy_reg_becomes_a_float():
    x, y, labels, spec = components()
    syn = DistilledSet(x, y, labels, spec, np.float32(0.5))
    assert type(syn.reg) is float and syn.reg == 0.5


BAD_TENSORS = {
    "NaN x": (lambda p: p.update(x=p["x"].clone().fill_(float("nan"))), "x contains NaN or Inf"),
    "infinite y": (lambda p: p["y"].__setitem__((0, 0), float("inf")), "y contains NaN or Inf"),
    "integer x": (lambda p: p.update(x=p["x"].to(torch.int64)), "x must hold floating-point values"),
    "float labels": (lambda p: p.update(labels=p["labels"].to(torch.float64)), "labels must be integer class indices"),
    "label k": (lambda p: p["labels"].__setitem__(0, 3), r"labels must lie in \[0, 3\)"),
    "label -1": (lambda p: p["labels"].__setitem__(0, -1), r"labels must lie in \[0, 3\)"),
    "no points": (lambda p: p.update(x=p["x"][:0], y=p["y"][:0], labels=p["labels"][:0]), "at least one point"),
}


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
def test_bad_tensors_raise(case):
    change, phrase = BAD_TENSORS[case]
    x, y, labels, spec = components()
    parts = {"x": x, "y": y.clone(), "labels": labels.clone()}
    change(parts)
    with pytest.raises(ValueError, match=phrase):
        DistilledSet(parts["x"], parts["y"], parts["labels"], spec, 0.0)


@pytest.mark.parametrize(
    "fields, phrase",
    [
        ({"image_shape": (2, 4, 5), "mean": (0.1, 0.2, 0.3), "std": (1.0, 1.0, 1.0)}, "mean has 3 values for image_shape"),
        ({"image_shape": (2, 4, 5), "mean": (0.1, 0.2), "std": (1.0, 0.0)}, "std must be positive"),
        ({"mean": (0.1, float("nan")), "std": (1.0, 1.0)}, "mean must be one or more finite numbers"),
        ({"mean": (0.1, 0.2, 0.3), "std": (1.0, 1.0, 1.0)}, "do not split 40 features"),
        ({"image_shape": (2, 4, 5.0)}, "image_shape entry must be an integer"),
        ({"image_shape": (-2, -4, 5)}, "image_shape entry must be >= 1"),
    ],
)
def test_bad_image_fields_raise(fields, phrase):
    x, y, labels, spec = components()
    with pytest.raises((ValueError, TypeError), match=phrase):
        DistilledSet(x, y, labels, spec, 0.0, **fields)


def test_saved_file_has_ordinary_permissions(tmp_path):
    # The temporary file behind the atomic write is created 0600; the result must not be.
    path = saved(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
