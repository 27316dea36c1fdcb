"""run_protocol: the paper's protocol on the embedded digits, checked against models fitted independently here."""

from __future__ import annotations

import pytest
import torch

from distillmem import KRR
from distillmem.data import load_dataset, train_val_split
from distillmem.protocol import make_feature_map, run_protocol

SEED = 0


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def result(digits):
    return run_protocol(data=digits, feature_map="fcnn", ipc=10, seed=SEED, init="noise")


@pytest.fixture(scope="module")
def paper_teacher(digits):
    """The paper's original model: lambda chosen on a seeded 5% split, fitted on the other 95% only."""
    fmap = make_feature_map("fcnn", digits.x_train[0].numel(), SEED)
    return KRR(fmap, reg="auto", seed=SEED, refit=False).fit(digits.x_train, digits.y_train)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def test_teacher_is_fitted_on_the_95_percent_split(digits, result, paper_teacher):
    train_idx, val_idx = train_val_split(len(digits.y_train), 0.05, SEED)
    assert result.n_train == len(train_idx) == len(digits.y_train) - len(val_idx) < len(digits.y_train)
    assert result.distilled.provenance.n == len(train_idx)
    assert result.reg == paper_teacher.reg_
    # The distilled set reproduces the 95% model, not one refitted on all training data.
    student = result.distilled.fit_krr()
    assert _rel(student.weights_, paper_teacher.weights_) < 1e-8
    refitted = KRR(paper_teacher.feature_map_, reg=paper_teacher.reg_).fit(digits.x_train, digits.y_train)
    assert _rel(refitted.weights_, paper_teacher.weights_) > 1e-3
    assert result.original_accuracy == paper_teacher.score(digits.x_test, digits.y_test)


def test_accuracies_and_agreement_are_measured_on_the_test_set(digits, result, paper_teacher):
    original = paper_teacher.predict(digits.x_test)
    distilled = result.distilled.fit_krr().predict(digits.x_test)
    assert result.n_test == len(digits.y_test)
    assert result.original_accuracy == float((original == digits.y_test).double().mean())
    assert result.distilled_accuracy == float((distilled == digits.y_test).double().mean())
    # Agreement compares the two models' predictions with each other, never with the labels.
    assert result.agreement == float((original == distilled).double().mean())
    assert result.agreement == 1.0 > result.original_accuracy > 0.9
    assert result.recovery_error == result.distilled.recovery_error < 1e-9

