"""Schedules and full-step plans equal the reference samplers' (expected values computed from the
references' own formulas: float32 arithmetic, round half to even)."""

import pytest

from migm.sampling.plan import full_step_plan
from migm.sampling.schedules import SCHEDULES, cosine_remaining, mask_schedule


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("steps,tokens", [(1, 256), (2, 256), (4, 256), (8, 64), (16, 256), (32, 256),
                                          (64, 256), (97, 256), (12, 1024)])
def test_schedule_sums_and_minimum(name, steps, tokens):
    try:
        counts = mask_schedule(name, steps, tokens)
    except ValueError as e:  # only where the reference's rounding leaves a step without a token
        assert "reveals" in str(e) and steps > 16
        return
    assert len(counts) == steps
    assert sum(counts) == tokens
    assert min(counts) >= 1


def test_halton_arccos_rounds_as_the_reference():
    # Halton-MaskGIT v1.0: round(share * L), zeros raised to 1, the remainder to the last step
    assert mask_schedule("arccos", 15, 1024) == [1, 26, 38, 46, 54, 61, 67, 73, 79, 84, 89, 94, 99, 104, 109]
    assert mask_schedule("arccos", 32, 1024) == [1, 8, 12, 14, 17, 19, 20, 22, 24, 25, 27, 28, 29, 31, 32, 33, 34,
                                                 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 47, 48, 49, 50, 49]
    assert mask_schedule("arccos", 16, 256) == [1, 6, 9, 10, 12, 14, 15, 16, 18, 19, 20, 21, 22, 23, 25, 25]
    assert mask_schedule("arccos", 32, 256)[-3:] == [12, 12, 11]  # the last step takes a negative remainder


def test_dimoo_cosine_in_float32():
    left = cosine_remaining(64, 4096)
    assert left[:4] == [4094, 4091, 4084, 4076] and left[-4:] == [301, 200, 100, 0]
    assert mask_schedule("dimoo", 64, 4096)[:6] == [2, 3, 7, 8, 11, 14]
    # float32 cos differs from float64 for N = 3: floor(256 cos(pi/3)) is 127 in float32, 128 in float64
    assert cosine_remaining(3, 256) == [221, 127, 0]


def test_zero_token_steps_are_refused():
    with pytest.raises(ValueError, match="reveals 0 tokens at step 97"):
        mask_schedule("arccos", 98, 256)
    with pytest.raises(ValueError, match="reveals 0 tokens at step"):
        mask_schedule("dimoo", 256, 4096)
    assert mask_schedule("arccos", 1, 256) == [256]


def test_plan_as_the_reference():
    assert full_step_plan(15, 7) == [0, 2, 4, 6, 9, 11, 13]
    assert full_step_plan(15, 8) == [0, 2, 4, 6, 8, 9, 11, 13]  # 7.5 rounds half to even: 8
    assert full_step_plan(32, 9) == [0, 4, 7, 11, 14, 18, 21, 25, 28]
    assert full_step_plan(32, 12) == [0, 3, 5, 8, 11, 13, 16, 19, 21, 24, 27, 29]
    assert full_step_plan(64, 14) == [0, 5, 9, 14, 18, 23, 27, 32, 37, 41, 46, 50, 55, 59]
    assert full_step_plan(64, 9) == [0, 7, 14, 21, 28, 36, 43, 50, 57]
    # k / B first: 45 * (7 / 10) = 31.499999999999996 rounds to 31 (45 * 7 / 10 = 31.5 would give 32)
    assert full_step_plan(45, 10) == [0, 4, 9, 14, 18, 22, 27, 31, 36, 40]


def test_schedule_errors():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        mask_schedule("arccos", 0, 256)
    with pytest.raises(ValueError, match="cannot exceed"):
        mask_schedule("arccos", 300, 256)
    with pytest.raises(ValueError, match="unknown schedule"):
        mask_schedule("nope", 8, 256)
