import pytest

from migm.sampling.schedules import SCHEDULES, cosine_remaining, mask_schedule


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("steps,tokens", [(1, 256), (2, 256), (4, 256), (8, 64), (16, 256), (32, 256),
                                          (64, 64), (100, 256), (12, 1024), (255, 256)])
def test_schedule_sums_and_minimum(name, steps, tokens):
    counts = mask_schedule(name, steps, tokens)
    assert len(counts) == steps
    assert sum(counts) == tokens
    assert min(counts) >= 1


def test_arccos_reveals_more_later():
    counts = mask_schedule("arccos", 16, 256)
    assert counts[0] == 1
    assert counts[-1] > counts[1]


def test_schedule_errors():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        mask_schedule("arccos", 0, 256)
    with pytest.raises(ValueError, match="cannot exceed"):
        mask_schedule("arccos", 300, 256)
    with pytest.raises(ValueError, match="unknown schedule"):
        mask_schedule("nope", 8, 256)


def test_cosine_remaining_ends_at_zero():
    rem = cosine_remaining(16, 256)
    assert rem[-1] == 0
    assert all(a >= b for a, b in zip(rem, rem[1:]))
