import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def has_animal_mnist() -> bool:
    try:
        import animal_mnist  # noqa: F401
    except ImportError:
        return False
    return True


needs_data = pytest.mark.skipif(not has_animal_mnist(), reason="animal-mnist not installed (make install adds it)")
