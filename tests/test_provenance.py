"""Provenance: the typed, versioned record of how a set was made, and its place in the file format."""

from __future__ import annotations

import importlib.metadata
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import _problem
from safetensors import safe_open
from safetensors.torch import save_file

import distillmem
from distillmem.container import digest
from distillmem import DistilledSet, Provenance, distill
from distillmem.features import RandomFCNN
from distillmem.provenance import METHODS, SCHEMA_VERSION


@pytest.fixture(scope="module")
def syn():
    x, y = _problem(n=120, d=12, k=3)
    return distill(x, y, ipc=2, feature_map=RandomFCNN(12, seed=1), reg=1e-2, init="real", dataset="toy", seed=3)


def craft_provenance(path, provenance):
    """Rewrite the set at ``path`` with ``provenance`` as its record and a matching checksum."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    meta = json.loads(metadata["meta"])
    meta["provenance"] = provenance
    metadata["meta"] = json.dumps(meta)
    metadata["sha256"] = digest(tensors, metadata["meta"], ("x", "y", "labels"))
    save_file(tensors, str(path), metadata=metadata)
    return path


# -- the record ----------------------------------------------------------------------------------------


def test_a_distilled_set_records_every_setting(syn):
    prov = syn.provenance
    assert isinstance(prov, Provenance)
    assert (prov.method, prov.dataset, prov.n, prov.ipc, prov.seed, prov.init) == ("closed_form", "toy", 120, 2, 3, "real")
    assert prov.teacher_reg == 1e-2 and prov.reg_s == 0.0 and prov.range_scale == 1.0
    assert prov.extras == {"root": "plus", "soft_labels": True}
    assert prov.recovery_error == syn.recovery_error < 1e-9
    assert prov.seconds >= 0 and prov.schema_version == SCHEMA_VERSION


def test_version_comes_from_the_installed_package_metadata(syn):
    assert syn.provenance.distillmem_version == importlib.metadata.version("distillmem") == distillmem.__version__


def test_save_load_round_trip_keeps_the_record_exactly(syn, tmp_path):
    loaded = DistilledSet.load(syn.save(tmp_path / "s.dm"))
    assert loaded.provenance == syn.provenance
    assert Provenance.from_dict(json.loads(json.dumps(syn.provenance.to_dict()))) == syn.provenance


def test_extras_are_stored_as_json_values():
    prov = Provenance(method="random", extras={"indices": (3, 1, 2)})
    assert prov.extras == {"indices": [3, 1, 2]}  # a tuple becomes the list a reload gives
    assert Provenance.from_dict(prov.to_dict()) == prov


def test_a_set_built_by_hand_is_marked_manual():
    s = DistilledSet(torch.zeros(2, 3, dtype=torch.float64), torch.eye(2, dtype=torch.float64), torch.arange(2),
                     RandomFCNN(3).spec(), 0.0)
    assert s.provenance.method == "manual" and s.recovery_error is None


def test_every_method_is_documented():
    assert set(METHODS) >= {"closed_form", "label_only", "deep_linear", "approximate", "private", "random",
                            "herding", "kip", "moments"}


# -- validation when built -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, error, message",
    [
        ({"method": "magic"}, ValueError, "provenance.method must be one of"),
        ({"n": True}, TypeError, "provenance.n must be an integer"),
        ({"n": 2.0}, TypeError, "provenance.n must be an integer"),
        ({"n": -1}, ValueError, "provenance.n must be >= 0"),
        ({"ipc": 0}, ValueError, "provenance.ipc must be >= 1"),
        ({"seed": "0"}, TypeError, "provenance.seed must be an integer"),
        ({"init": "zeros"}, ValueError, "provenance.init must be one of"),
        ({"dataset": 5}, TypeError, "provenance.dataset must be a string or null"),
        ({"teacher_reg": -1.0}, ValueError, "provenance.teacher_reg must be >= 0"),
        ({"reg_s": math.nan}, TypeError, "provenance.reg_s must be a number"),
        ({"reg_s": math.inf}, ValueError, "provenance.reg_s must be finite"),
        ({"range_scale": 0.0}, ValueError, "provenance.range_scale must be > 0"),
        ({"recovery_error": "small"}, TypeError, "provenance.recovery_error must be a number"),
        ({"seconds": -1.0}, ValueError, "provenance.seconds must be >= 0"),
        ({"created": None}, TypeError, "provenance.created must be a string"),
        ({"schema_version": SCHEMA_VERSION + 1}, ValueError, "provenance.schema_version is 2"),
        ({"extras": [1]}, TypeError, "provenance.extras must be a dict"),
        ({"extras": {"root": 3}}, TypeError, "provenance.extras.root must be a string"),
        ({"extras": {"sigma": 1.0}}, ValueError, "provenance.extras has key 'sigma', not one of method 'closed_form'"),
        ({"extras": {"soft_labels": np.bool_(True)}}, TypeError, "provenance.extras must hold JSON values"),
    ],
)
def test_bad_fields_are_refused_naming_the_field(fields, error, message):
    with pytest.raises(error, match=message):
        Provenance(**{"method": "closed_form", **fields})


def test_recovery_error_may_be_infinite_but_not_nan():
    assert Provenance(method="random", recovery_error=math.inf).recovery_error == math.inf
    with pytest.raises(TypeError, match="recovery_error"):
        Provenance(method="random", recovery_error=math.nan)


def test_a_distilled_set_refuses_a_dict_as_provenance(syn):
    with pytest.raises(TypeError, match="provenance must be a distillmem Provenance, got dict"):
        DistilledSet(syn.x, syn.y, syn.labels, syn.feature_map_spec, syn.reg, provenance={"method": "closed_form"})


# -- validation at load ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.update(n="120"), r"provenance\.n must be an integer or null, got '120'"),
        (lambda p: p.update(ipc=0), r"provenance\.ipc must be >= 1"),
        (lambda p: p.update(method="mystery"), r"provenance\.method must be one of"),
        (lambda p: p.update(range_scale=-2.0), r"provenance\.range_scale must be > 0"),
        (lambda p: p["extras"].update(soft_labels="yes"), r"provenance\.extras\.soft_labels must be true or false"),
        (lambda p: p.update(colour="blue"), r"provenance has unknown field\(s\) \['colour'\]"),
        (lambda p: p.pop("method"), r"provenance\.method is missing"),
        (lambda p: p.update(schema_version=7), r"provenance\.schema_version is 7"),
    ],
)
def test_a_crafted_record_fails_at_load_naming_the_file_and_the_field(syn, tmp_path, change, message):
    record = syn.provenance.to_dict()
    change(record)
    path = craft_provenance(syn.save(tmp_path / "s.dm"), record)
    with pytest.raises(ValueError, match=message) as info:
        DistilledSet.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("record", [[1, 2], "closed_form", None])
def test_a_record_that_is_not_an_object_fails_at_load(syn, tmp_path, record):
    path = craft_provenance(syn.save(tmp_path / "s.dm"), record)
    with pytest.raises(ValueError, match="provenance must be a JSON object") as info:
        DistilledSet.load(path)
    assert str(path) in str(info.value)


# -- files written before the record was typed --------------------------------------------------------------


def test_an_untyped_closed_form_record_is_converted(syn, tmp_path):
    old = {"dataset": "toy", "n": 120, "ipc": 2, "init": "real", "soft_labels": True, "seed": 3, "teacher_reg": 0.01,
           "reg_s": 0.0, "root": "plus", "range_scale": 1.0, "recovery_error": 1e-12, "seconds": 0.5,
           "created": "2026-01-01T00:00:00+0000", "distillmem_version": "0.1.0"}
    loaded = DistilledSet.load(craft_provenance(syn.save(tmp_path / "s.dm"), old))
    prov = loaded.provenance
    assert (prov.method, prov.n, prov.init, prov.distillmem_version) == ("closed_form", 120, "real", "0.1.0")
    assert prov.extras == {"soft_labels": True, "root": "plus"}


def test_untyped_private_and_memory_records_are_converted(syn, tmp_path):
    private = {"method": "dp-gaussian", "n": 120, "ipc": 2, "sigma": 0.5, "epsilon": 0.5, "delta": 1e-5,
               "noise_constant": "2*sqrt(2)", "guarantee": "each row of D alone"}
    prov = DistilledSet.load(craft_provenance(syn.save(tmp_path / "p.dm"), private)).provenance
    assert prov.method == "private" and prov.distillmem_version == "unknown"
    assert prov.extras == {"sigma": 0.5, "epsilon": 0.5, "delta": 1e-5, "noise_constant": 2 * math.sqrt(2)}
    memory = {"kind": "moment-memory", "n": 500, "memory_points": 6, "memory_reg": 1.0, "max_points": None,
              "shrink": "truncate", "aligned": False, "range_scale": 2.0, "recovery_error": 1e-13, "created": "x"}
    prov = DistilledSet.load(craft_provenance(syn.save(tmp_path / "m.dm"), memory)).provenance
    assert (prov.method, prov.n, prov.teacher_reg, prov.range_scale) == ("moments", 500, 1.0, 2.0)
    assert prov.extras == {"memory_points": 6, "max_points": None, "shrink": "truncate", "aligned": False}


def test_an_untyped_record_with_a_bad_value_still_fails_naming_the_field(syn, tmp_path):
    path = craft_provenance(syn.save(tmp_path / "s.dm"), {"n": "many", "root": "plus"})
    with pytest.raises(ValueError, match=r"provenance\.n must be an integer"):
        DistilledSet.load(path)


UNTYPED = Path(__file__).parent / "data" / "untyped_provenance"


@pytest.mark.parametrize("method", sorted(p.stem for p in UNTYPED.glob("*.dm")))
def test_files_written_by_the_untyped_builders_still_load(method):
    # One small set per builder, saved by distillmem at commit 914ae53 (before the record was typed),
    # on a 60-point, 6-feature, 3-class problem.
    s = DistilledSet.load(UNTYPED / f"{method}.dm")
    assert s.provenance.method == method and s.provenance.n == 60
    assert set(s.provenance.extras) <= set(distillmem.provenance.EXTRAS[method])
    if method not in ("random", "herding", "kip"):  # the real-point baselines are not exact
        assert s.recovery_error < 1e-9


def test_every_builder_has_an_untyped_file():
    assert {p.stem for p in UNTYPED.glob("*.dm")} == set(METHODS) - {"manual"}
