"""The storage-bits formula (bench_harness.contract.storage), on hand-computed values."""
import numpy as np
import pandas as pd

from bench_harness.contract.storage import model_storage_bits, sparse_storage_bits


def test_a_sparse_model_stores_its_nonzeros_and_a_mask_over_the_prunable_weights():
    # 1,000 parameters, 900 of them prunable, 100 non-zero left: 32 x 100 + 900
    assert sparse_storage_bits(1000, 100, 900, dense=False) == 4100
    # nothing pruned yet still pays the mask: 32 x 1000 + 900
    assert sparse_storage_bits(1000, 1000, 900, dense=False) == 32_900


def test_a_dense_model_is_32_bits_per_parameter():
    assert sparse_storage_bits(1000, 100, 900, dense=True) == 32_000


def test_a_pruners_stated_storage_wins():
    assert model_storage_bits(164, 1000, 100, 900, dense=False) == 164
    assert model_storage_bits(0, 1000, 100, 900, dense=False) == 0  # zero is a statement, not a missing one
    assert model_storage_bits(None, 1000, 100, 900, dense=False) == 4100
    assert model_storage_bits(None, 1000, 100, 900, dense=True) == 32_000
    assert type(model_storage_bits(np.int64(7), 1, 1, 1, dense=False)) is int


def test_the_formula_works_element_wise_on_columns():
    total, nonzero, prunable = pd.Series([1000, 10]), pd.Series([100, 4]), pd.Series([900, 8])
    assert list(sparse_storage_bits(total, nonzero, prunable, dense=False)) == [4100, 136]
    assert list(sparse_storage_bits(total.to_numpy(), nonzero.to_numpy(), prunable.to_numpy(), dense=True)) \
        == [32_000, 320]
