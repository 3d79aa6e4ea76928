"""Fixtures of the model tests: tiny configs built from the real config classes."""
from __future__ import annotations

import pytest
from modelkit import TINY_STYLEGAN2, build

from gandist.data.base import DataInfo


@pytest.fixture
def tiny_stylegan2():
    """An unconditional StyleGAN2 for 16 px grey images (num_ws 6)."""
    return build(TINY_STYLEGAN2 + ["model.conditional=false"], DataInfo((1, 16, 16), 0))
