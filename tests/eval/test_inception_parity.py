"""gandist's InceptionV3-FID equals pytorch-fid's, proven on random weights (the real file is never downloaded).

pytorch-fid 0.3.0 is installed `--no-deps` (test extra); its model module runs against torchvision's vendored
inception source (tests/eval/vendor/). Both nets get the same random state dict in pytorch-fid's weight-file layout
(the keys of pt_inception-2015-12-05-6726825d.pth), saved to a file that gandist loads as it loads the real one.
"""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
import torch

from gandist.eval.features import InceptionV3FID, load_inception, sha256_of

pytestmark = pytest.mark.slow  # ~70 s on 2 shared cores: seven full InceptionV3 passes

# pytorch-fid is in the test extra; without it the parity tests skip, saying how to install it
pytest.importorskip("pytorch_fid", reason="pip install --no-deps pytorch-fid==0.3.0")

_SHIM = Path(__file__).with_name("vendor") / "pytorch_fid_shim.py"
# Float32 through ~100 layers, two implementations that may order sums differently: both compare at this bound.
ATOL, RTOL = 1e-4, 1e-4


def _shim():
    spec = importlib.util.spec_from_file_location("gandist_test_pytorch_fid_shim", _SHIM)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_fid_state(seed: int = 0) -> dict:
    """Random weights in the layout of pytorch-fid's weight file; BN statistics random too (eval mode uses them)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in InceptionV3FID().state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(value)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif key.endswith(("bn.weight",)):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        else:
            # fan-in scaled so activations stay O(1) through the depth and the comparison is not of zeros
            fan_in = value[0].numel() if value.dim() > 1 else 1
            state[key] = torch.randn(value.shape, generator=gen) * (fan_in ** -0.5 if value.dim() > 1 else 0.1)
    return state


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """(pytorch-fid's FID InceptionV3 wrapper, its underlying Inception3, gandist's port loaded from a file, URLs)."""
    state = _random_fid_state()
    monkeypatch = pytest.MonkeyPatch()
    try:
        fid_module, requested = _shim().load_pytorch_fid_inception(state, monkeypatch)
        theirs = fid_module.InceptionV3([fid_module.InceptionV3.BLOCK_INDEX_BY_DIM[2048]],
                                        use_fid_inception=True).eval()
        their_inception = fid_module.fid_inception_v3().eval()
    finally:
        monkeypatch.undo()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path = tmp_path_factory.mktemp("weights") / "pt_inception-2015-12-05-random.pth"
    path.write_bytes(data)
    ours = load_inception(str(path), sha256=sha256_of(data))
    return theirs, their_inception, ours, requested


def _images(size: int, seed: int) -> torch.Tensor:
    """Random uint8-valued images in [0, 1] (pytorch-fid's input range), 3 channels."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (2, 3, size, size), generator=gen).float() / 255


def test_pytorch_fid_asked_for_the_published_weights_and_got_ours(nets):
    _, _, _, requested = nets
    assert requested and all(url.endswith("pt_inception-2015-12-05-6726825d.pth") for url in requested)


@pytest.mark.parametrize("size", [299, 64, 128, 512])
def test_pool3_features_equal_pytorch_fid(nets, size):
    theirs, _, ours, _ = nets
    images = _images(size, seed=size)
    with torch.no_grad():
        expected = theirs(images)[0].flatten(1)
        features, _ = ours(images * 2 - 1)  # gandist takes [-1, 1]; pytorch-fid normalises [0, 1] itself
    assert expected.shape == features.shape == (2, 2048)
    assert expected.abs().max() > 1e-2  # random weights still give non-trivial features
    torch.testing.assert_close(features, expected, atol=ATOL, rtol=RTOL)
    print(f"size {size}: max |feature diff| {(features - expected).abs().max().item():.3g}")


@pytest.mark.parametrize("size", [299, 96])
def test_logits_equal_pytorch_fid_inception(nets, size):
    _, their_inception, ours, _ = nets
    images = _images(size, seed=1000 + size)
    with torch.no_grad():
        # Inception3 has no resize of its own: pytorch-fid's wrapper resizes [0, 1] images, then maps to [-1, 1]
        resized = torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        expected = their_inception(resized * 2 - 1)
        _, logits = ours(images * 2 - 1)
    assert expected.shape == logits.shape == (2, 1008)
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=RTOL)
    print(f"size {size}: max |logit diff| {(logits - expected).abs().max().item():.3g}")
