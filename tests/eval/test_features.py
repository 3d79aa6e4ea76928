"""Feature networks: InceptionV3-FID shapes and weight checks; the built-in digits network's accuracy."""
from __future__ import annotations

import pytest
import torch

from gandist.errors import UserError
from gandist.eval.features import (DigitsNet, InceptionV3FID, load_digits_net, load_feature_net, load_inception,
                                   sha256_of, train_digits_net)


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """A randomly initialised InceptionV3-FID saved as a weights file, and its sha256."""
    torch.manual_seed(0)
    net = InceptionV3FID().eval()
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(net.state_dict(), path)
    return net, path, sha256_of(path.read_bytes())


def test_inception_gives_2048_features_and_1008_logits_for_any_input_size(random_inception):
    net, _, _ = random_inception
    with torch.no_grad():
        feats, logits = net(torch.rand(2, 3, 32, 32) * 2 - 1)
        grey_feats, _ = net(torch.rand(1, 1, 20, 20) * 2 - 1)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008) and grey_feats.shape == (1, 2048)
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # pool3 of ReLU activations
    assert sum(p.numel() for p in net.parameters()) == 23_850_960  # torchvision inception_v3 (27,161,264) - AuxLogits (3,326,696) + 8 more fc classes (16,392)


def test_inception_loads_weights_whose_sha256_matches(random_inception):
    net, path, digest = random_inception
    loaded = load_inception(str(path), sha256=digest)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], net(x)[0])


def test_inception_rejects_a_checksum_mismatch(random_inception):
    _, path, _ = random_inception
    with pytest.raises(UserError, match="sha256 .* does not match the expected 6726825d"):
        load_inception(str(path))  # random weights are not pt_inception-2015-12-05-6726825d.pth
    with pytest.raises(UserError, match="does not match"):
        load_inception(str(path), sha256="0" * 64)


def test_inception_rejects_weights_of_another_network(tmp_path):
    path = tmp_path / "digits.pth"
    torch.save(DigitsNet().state_dict(), path)
    with pytest.raises(UserError, match="weights of a different network than InceptionV3FID"):
        load_inception(str(path), sha256=sha256_of(path.read_bytes()))


def test_inception_without_a_path_says_nothing_is_downloaded():
    with pytest.raises(UserError, match="nothing is downloaded"):
        load_feature_net("inception", None)
    with pytest.raises(UserError, match="cannot read the Inception weights"):
        load_inception("/nonexistent/pt_inception.pth")


def test_digits_network_reaches_high_held_out_accuracy(digits_cache):
    assert digits_cache["accuracy"] >= 0.97


def test_digits_training_is_deterministic():
    a, acc_a = train_digits_net(seed=3, epochs=1)
    b, acc_b = train_digits_net(seed=3, epochs=1)
    assert acc_a == acc_b
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_digits_network_loads_from_cache_and_rejects_foreign_files(digits_cache, tmp_path):
    net = load_digits_net()  # from GANDIST_CACHE, set by the fixture
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    assert torch.equal(net(x)[1], digits_cache["net"](x)[1])
    bad = tmp_path / "bad.pt"
    torch.save({"network": "other"}, bad)
    with pytest.raises(UserError, match="not a digits feature network"):
        load_digits_net(bad)
    with pytest.raises(UserError, match="gandist features digits"):
        load_digits_net(tmp_path / "missing.pt")


def test_digits_network_classifies_each_channel_of_stacked_digits(digits_cache):
    from gandist.config import config_from_dict
    from gandist.data.stacked import StackedDigitsSource

    source = StackedDigitsSource(config_from_dict({"data": {"kind": "stacked_digits"}, "model": {"arch": "dcgan"}}).data)
    x, y = source.real_samples(500, seed=1)
    digits = digits_cache["net"].classify_channels(x)
    predicted = digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]
    assert (predicted == y).double().mean() > 0.97  # the training images themselves: near-perfect
