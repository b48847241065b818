"""zs_kernels.testing: the error rule the kernel tests apply, and the NaN-filled allocations.
(The benches' peers are tested against the oracle in their op's test file.)"""

import pytest
import torch

from zs_kernels import testing


def test_error_rule_accepts_rounding_and_rejects_larger_errors():
    oracle = torch.randn(64, 32, dtype=torch.float64) * 3
    low_precision = oracle.half()  # PyTorch's error: rounding to fp16
    error, pytorch_error = testing.assert_within_error_rule(oracle.half(), low_precision, oracle)
    assert error == pytorch_error > 0
    floor = testing.error_floor(oracle, torch.float16)
    assert floor == torch.finfo(torch.float16).eps * oracle.abs().max().item()
    wrong = oracle.clone()
    wrong[3, 5] += 2 * pytorch_error + 2 * floor
    with pytest.raises(AssertionError, match="error"):
        testing.assert_within_error_rule(wrong.half(), low_precision, oracle)


def test_error_rule_floor_covers_an_exact_pytorch_result():
    """PyTorch exact (error 0): one ulp of the largest output is still allowed, two are not."""
    oracle = torch.full((8,), 1.0, dtype=torch.float64)
    exact = oracle.float()
    ulp = torch.finfo(torch.float32).eps
    testing.assert_within_error_rule(exact + ulp, exact, oracle)
    with pytest.raises(AssertionError):
        testing.assert_within_error_rule(exact + 2 * ulp, exact, oracle)


def test_error_rule_rejects_non_finite_results_and_wrong_shapes():
    oracle = torch.randn(5, dtype=torch.float64)
    result = oracle.float()
    result[2] = float("nan")
    with pytest.raises(AssertionError, match="non-finite"):
        testing.assert_within_error_rule(result, oracle.float(), oracle)
    with pytest.raises(AssertionError, match="shape"):
        testing.assert_within_error_rule(oracle.float()[:4], oracle.float(), oracle)


def test_nan_filled_allocations():
    like = torch.zeros(3, 4)
    with testing.nan_filled_allocations():
        assert torch.empty(3, 4).isnan().all()
        assert torch.empty_like(like).isnan().all()
        assert like.new_empty(2, 2).isnan().all()
        assert torch.empty(3, dtype=torch.int64).dtype == torch.int64  # integers are left alone
    assert torch.empty(3, 4).shape == (3, 4)  # restored (no fill; contents undefined)
    with pytest.raises(RuntimeError):
        with testing.nan_filled_allocations():
            raise RuntimeError("inside")
    assert torch.empty_like.__module__ != testing.__name__
