"""Feature networks for FID/KID/IS/PR: InceptionV3 with the standard FID weights, and a built-in digits CNN.

Every feature network maps images in [-1, 1] (any size; 1 or 3 channels) to `(features [N, D], logits [N, C])`.

InceptionV3: the TensorFlow FID graph (inception-2015-12-05) as ported by pytorch-fid
(`pt_inception-2015-12-05-6726825d.pth`, https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/).
gandist never downloads it: the user gives a path or fsspec URL. The FID variant differs from torchvision's
InceptionV3 in four places, reproduced here: average pools in Mixed_5*/6*/7b ignore padded zeros
(count_include_pad=False, as TensorFlow does), Mixed_7c pools with max instead of average, there are 1008 classes,
and BN eps is 1e-3. Inputs are quantized to uint8 and resized to 299x299 by gandist.eval.resize (default: torch
bilinear, align_corners=False, as pytorch-fid).

Digits: a small CNN trained deterministically on scikit-learn's 8x8 digits (`gandist features digits`), so
evaluation works offline and in tests. Its 128-d penultimate layer gives features, its 10 logits classify digits.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gandist.errors import UserError
from gandist.eval.resize import resize_for_features
from gandist.fileio import atomic_write_bytes

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256_PREFIX = "6726825d"  # torch.hub convention: the file name carries the sha256's first 8 hex digits
DIGITS_FILE = "digits_features.pt"
DIGITS_RESOLUTION = 16


# ---------------------------------------------------------------------------------------------------------------
# InceptionV3 (FID variant)


class BasicConv2d(nn.Module):
    """conv (no bias) -> BN (eps 1e-3) -> ReLU, named as in torchvision so the ported weights load."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x):
    # TensorFlow's average pool does not count padded zeros.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = BasicConv2d(cin, 48, 1), BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = BasicConv2d(cin, 192, 1), BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # FID's Mixed_7c uses max pooling (a quirk of the TF graph, kept for comparability)
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class InceptionV3FID(nn.Module):
    """InceptionV3 as in TensorFlow's FID code: pool3 features [N, 2048] and logits [N, 1008]."""

    feature_dim = 2048
    num_classes = 1008
    name = "inception"

    def __init__(self, resize: str = "pytorch_fid"):
        super().__init__()
        self.resize = resize  # gandist.eval.resize mode: how inputs are quantized and brought to 299 px
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = InceptionE(1280, max_pool=False), InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [N, 1|3, H, W] in [-1, 1] -> (features [N, 2048], logits [N, 1008])."""
        x = images.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = resize_for_features(x, 299, self.resize)  # uint8 quantization, then the chosen reference's resize
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        features = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return features, self.fc(features)


def sha256_of(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def read_checked_weights(url: str, sha256: str | None, what: str, file_name: str) -> tuple[dict, str]:
    """(state dict, sha256) of a weights file at a path or fsspec URL; `sha256` (a full digest or a prefix, such as
    the torch.hub file-name convention) must match when given. Nothing is downloaded."""
    import fsspec

    try:
        with fsspec.open(url, "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, OSError) as err:
        raise UserError(f"{url}: cannot read the {what} weights ({err}); give the path of {file_name}") from None
    digest = sha256_of(data)
    if sha256 is not None and not digest.startswith(sha256.lower()):
        raise UserError(f"{url}: sha256 {digest[:16]}... does not match the expected {sha256.lower()[:16]}...; the file "
                        f"is corrupt or not {file_name} (re-fetch it, or pass its sha256 if you use other weights)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a weights file"
        raise UserError(f"{url}: not a torch weights file ({type(err).__name__}); give {file_name}") from None
    return state, digest


def load_inception(url: str, sha256: str | None = None, resize: str = "pytorch_fid") -> InceptionV3FID:
    """InceptionV3-FID with weights from a path or fsspec URL; checks the sha256 (full if given, else the prefix)."""
    state, digest = read_checked_weights(url, sha256 or INCEPTION_SHA256_PREFIX, "Inception", INCEPTION_FILE)
    net = InceptionV3FID(resize)
    check_state_matches(net, state, url)
    net.load_state_dict(state, strict=False)
    net.weights_sha256 = digest  # results and reference statistics are keyed by the file's sha256
    return net.eval().requires_grad_(False)


def check_state_matches(net: nn.Module, state: dict, source: str) -> None:
    """Raise a UserError naming the first missing/unexpected/misshapen key when `state` is not `net`'s weights."""
    if not isinstance(state, dict):
        raise UserError(f"{source}: holds a {type(state).__name__}, not a state dict of {type(net).__name__}")
    own = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    theirs = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
    bad_shape = [k for k in own.keys() & theirs.keys() if tuple(own[k].shape) != tuple(theirs[k].shape)]
    if missing or unexpected or bad_shape:
        detail = (f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}" if unexpected
                  else f"shape of {bad_shape[0]!r} is {tuple(theirs[bad_shape[0]].shape)}, expected {tuple(own[bad_shape[0]].shape)}")
        raise UserError(f"{source}: weights of a different network than {type(net).__name__} "
                        f"({len(missing)} keys missing, {len(unexpected)} unexpected; {detail})")


# ---------------------------------------------------------------------------------------------------------------
# Built-in digits network


class DigitsNet(nn.Module):
    """Small CNN on 16x16 grey digits: 128-d features, 10 logits. Colour inputs are averaged to grey."""

    feature_dim = 128
    num_classes = 10
    name = "digits"

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),  # 8x8
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),  # 4x4
            nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [N, C, H, W] in [-1, 1] -> (features [N, 128], logits [N, 10])."""
        x = images.float()
        if x.shape[1] != 1:
            x = x.mean(1, keepdim=True)
        if x.shape[-1] != DIGITS_RESOLUTION or x.shape[-2] != DIGITS_RESOLUTION:
            x = F.interpolate(x, size=(DIGITS_RESOLUTION,) * 2, mode="bilinear", align_corners=False, antialias=True)
        features = self.body(x)
        return features, self.head(features)

    @torch.no_grad()
    def classify_channels(self, images: torch.Tensor) -> torch.Tensor:
        """Digit of each channel [N, C] (stacked digits: one digit per colour channel)."""
        n, c = images.shape[:2]
        _, logits = self(images.reshape(n * c, 1, *images.shape[2:]))
        return logits.argmax(1).reshape(n, c)


def digits_split(seed: int = 0, held_out: int = 360) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test) of scikit-learn's digits at 16x16 in [-1, 1], a seeded split."""
    from gandist.data.sources import load_digits_tensor

    x, y = load_digits_tensor(DIGITS_RESOLUTION)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:held_out], perm[held_out:]
    return x[train], y[train], x[test], y[test]


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to 1 pixel and small intensity jitter: robustness to generated digits."""
    dx, dy = (torch.randint(-1, 2, (2,), generator=generator)).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    scale = 1 + 0.1 * (torch.rand(len(x), 1, 1, 1, generator=generator) - 0.5)
    return (x * scale).clamp(-1, 1)


def train_digits_net(seed: int = 0, epochs: int = 30, batch_size: int = 64) -> tuple[DigitsNet, float]:
    """Train DigitsNet deterministically; returns (net in eval mode, held-out accuracy)."""
    x_train, y_train, x_test, y_test = digits_split(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, foreach=False)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    with torch.autograd.set_grad_enabled(True):
        for _ in range(epochs):
            net.train()
            perm = torch.randperm(len(x_train), generator=gen)
            for start in range(0, len(perm), batch_size):
                idx = perm[start:start + batch_size]
                _, logits = net(_shift(x_train[idx], gen))
                loss = F.cross_entropy(logits, y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
    net.eval().requires_grad_(False)
    with torch.no_grad():
        accuracy = float((net(x_test)[1].argmax(1) == y_test).float().mean())
    return net, accuracy


def default_cache_dir() -> Path:
    """$GANDIST_CACHE, else $XDG_CACHE_HOME/gandist, else ~/.cache/gandist."""
    if os.environ.get("GANDIST_CACHE"):
        return Path(os.environ["GANDIST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gandist"


def save_digits_net(net: DigitsNet, accuracy: float, path: Path) -> None:
    """Write weights + held-out accuracy atomically (tmp file, then rename)."""
    buffer = io.BytesIO()
    torch.save({"network": "digits", "state": net.state_dict(), "accuracy": accuracy}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_digits_net(path: str | Path | None = None, train_if_missing: bool = True) -> DigitsNet:
    """DigitsNet from `path` (file or folder), else from the cache; trains and caches it (seconds) when absent."""
    if path is not None:
        file = Path(path)
        file = file / DIGITS_FILE if file.is_dir() else file
        if not file.is_file():
            raise UserError(f"{file}: digits feature weights not found; create them with `gandist features digits --out {file.parent}`")
    else:
        file = default_cache_dir() / DIGITS_FILE
        if not file.is_file():
            if not train_if_missing:
                raise UserError(f"{file}: no cached digits feature network; run `gandist features digits`")
            net, accuracy = train_digits_net()
            save_digits_net(net, accuracy, file)
            return net
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not our weights file"
        raise UserError(f"{file}: not a gandist digits weights file ({type(err).__name__}); recreate it with `gandist features digits`") from None
    if not isinstance(blob, dict) or blob.get("network") != "digits":
        raise UserError(f"{file}: not a digits feature network file; recreate it with `gandist features digits`")
    net = DigitsNet()
    check_state_matches(net, blob["state"], str(file))
    net.load_state_dict(blob["state"])
    return net.eval().requires_grad_(False)


def load_feature_net(kind: str, path: str | None = None, sha256: str | None = None,
                     resize: str = "pytorch_fid") -> nn.Module:
    """The feature network `kind` (digits | inception); inception needs `path` (a local path or fsspec URL)."""
    if kind == "digits":
        return load_digits_net(path)
    if kind == "inception":
        if not path:
            raise UserError(f"inception features need the weights file: pass --features-path (or eval.features_path) "
                            f"pointing at {INCEPTION_FILE}; nothing is downloaded")
        return load_inception(path, sha256, resize)
    raise UserError(f"unknown feature network {kind!r}; use digits or inception")


@torch.no_grad()
def extract(net: nn.Module, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) of images in batches."""
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        f, lg = net(images[start:start + batch_size])
        feats.append(f)
        logits.append(lg)
    return torch.cat(feats), torch.cat(logits)
