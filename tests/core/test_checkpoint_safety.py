"""A checkpoint cannot run code: files load with weights_only=True, their structure is checked, old ones convert."""
import hashlib
import io
import json
import os
import pickle

import numpy as np
import pytest
import torch

import gandist
from gandist.checkpoint import FORMAT_VERSION, CheckpointStore
from gandist.config import load_config
from gandist.errors import CheckpointError
from gandist.train.loop import run_training
from gandist.randomness import rng_state, set_rng_state

TINY = ["model.arch=mlp", "model.hidden=8", "model.depth=1", "train.batch_size=8", "telemetry.progress=false",
        "telemetry.sample_every=0", "checkpoint.every=2", "checkpoint.keep_last=5"]
MARKER_ENV = "GANDIST_TEST_MARKER"


class WritesMarker:
    """Unpickling this runs os.system-like code: it writes the marker file named by the environment."""

    def __reduce__(self):
        return (_touch_marker, ())


def _touch_marker():
    open(os.environ[MARKER_ENV], "w").write("code ran")
    return {}


def _train(run_dir, steps, extra=()):
    return run_training(load_config(None, TINY + [f"train.steps={steps}", *extra]), str(run_dir))


def _replace(run_dir, step: int, name: str, state) -> str:
    """Write `state` (any picklable object) as step's file `name`, with its sha256 in the manifest (tampering)."""
    folder = run_dir / "checkpoints" / f"step-{step:08d}"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (folder / name).write_bytes(buffer.getvalue())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256(buffer.getvalue()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return str(folder / name)


def _shared(run_dir, step: int) -> dict:
    path = run_dir / "checkpoints" / f"step-{step:08d}" / "shared.pt"
    return torch.load(path, weights_only=True)


@pytest.fixture
def marker(tmp_path, monkeypatch):
    path = tmp_path / "marker"
    monkeypatch.setenv(MARKER_ENV, str(path))
    return path


def test_code_in_shared_pt_is_refused_and_never_runs(tmp_path, marker):
    _train(tmp_path / "run", 4)
    state = _shared(tmp_path / "run", 4)
    state["payload"] = WritesMarker()
    path = _replace(tmp_path / "run", 4, "shared.pt", state)
    with pytest.raises(CheckpointError, match="step-00000004/shared.pt: refused") as err:
        CheckpointStore(str(tmp_path / "run" / "checkpoints")).load(4)
    assert path in str(err.value)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # the file really is one that unpickles code
        torch.load(path, weights_only=True)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_resume_and_load_run_fall_back_past_a_code_carrying_checkpoint(tmp_path, marker, caplog):
    run = tmp_path / "run"
    _train(run, 4)
    _replace(run, 4, "rank-00000.pt", WritesMarker())
    assert gandist.load_run(str(run)).step == 4  # load_run reads only shared.pt, which is intact
    state = _shared(run, 4)
    state["payload"] = WritesMarker()
    _replace(run, 4, "shared.pt", state)
    assert gandist.load_run(str(run)).step == 2
    summary = _train(run, 6)  # resumes from step 2, the newest valid checkpoint
    starts = [json.loads(x) for x in open(run / "events.jsonl") if '"start"' in x]
    assert starts[-1]["resumed_from"] == 2 and summary["steps"] == 6
    assert "refused" in caplog.text and "falling back" in caplog.text
    assert not marker.exists()


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("data_info"), "missing data_info"),
    (lambda s: s.update(loop=[1, 2]), "entry 'loop' is a list, expected dict"),
    (lambda s: s["loop"].pop("images_seen"), "loop: not a complete gandist checkpoint: missing images_seen"),
    (lambda s: s["data_info"].update(num_classes="ten"), "entry 'num_classes' is a str, expected int"),
    (lambda s: s["G"].update(extra=[1.0]), r"G\['extra'\] is not a tensor"),
], ids=["no-data_info", "loop-a-list", "no-images_seen", "num_classes-a-str", "G-not-tensors"])
def test_wrong_contents_with_right_sha256_are_a_checkpoint_error(tmp_path, cli, change, message):
    run = tmp_path / "run"
    _train(run, 2)
    state = _shared(run, 2)
    change(state)
    _replace(run, 2, "shared.pt", state)
    with pytest.raises(CheckpointError, match=message):
        CheckpointStore(str(run / "checkpoints")).load(2)
    proc = cli("generate", run, "--out", tmp_path / "g.png", "--checkpoint", "2", check_rc=2)
    assert "shared.pt" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        gandist.load_run(str(run))


def test_resume_refuses_a_rank_file_with_wrong_contents_and_takes_the_previous_one(tmp_path):
    run = tmp_path / "run"
    _train(run, 4)
    _replace(run, 4, "rank-00000.pt", {"strategy": {}, "rng": [], "data": {}})
    with pytest.raises(CheckpointError, match="rank-00000.pt: entry 'rng' is a list"):
        CheckpointStore(str(run / "checkpoints")).load(4, rank=0)
    _train(run, 6)
    starts = [json.loads(x) for x in open(run / "events.jsonl") if '"start"' in x]
    assert starts[-1]["resumed_from"] == 2


def test_rng_state_is_plain_and_restores_every_stream(tmp_path):
    import random

    np.random.seed(3), random.seed(4), torch.manual_seed(5)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    state = rng_state()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    want = (np.random.standard_normal(5), [random.random() for _ in range(5)], torch.rand(5))
    set_rng_state(loaded)
    got = (np.random.standard_normal(5), [random.random() for _ in range(5)], torch.rand(5))
    assert np.array_equal(want[0], got[0]) and want[1] == got[1] and torch.equal(want[2], got[2])


def _make_format_1(run):
    """Rewrite a run's checkpoints as the previous gandist wrote them: numpy / python RNG tuples, format 1."""
    for folder in sorted((run / "checkpoints").glob("step-*")):
        manifest = json.loads((folder / "manifest.json").read_text())
        rank = torch.load(folder / "rank-00000.pt", weights_only=True)
        numpy_state = rank["rng"]["numpy"]
        rank["rng"]["numpy"] = (numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                                numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
        version, internal, gauss = rank["rng"]["python"]
        rank["rng"]["python"] = (version, tuple(internal), gauss)
        buffer = io.BytesIO()
        torch.save(rank, buffer)
        (folder / "rank-00000.pt").write_bytes(buffer.getvalue())
        manifest["files"]["rank-00000.pt"] = hashlib.sha256(buffer.getvalue()).hexdigest()
        manifest["format"] = 1
        (folder / "manifest.json").write_text(json.dumps(manifest))


def test_format_1_checkpoint_is_refused_with_how_to_convert_then_converts_and_resumes_exactly(tmp_path, cli):
    straight, old = tmp_path / "straight", tmp_path / "old"
    _train(straight, 4)
    _train(old, 2)
    _make_format_1(old)
    with pytest.raises(CheckpointError, match="checkpoint format 1.*gandist checkpoint convert RUN_DIR --trusted"):
        _train(old, 4)  # no silent fresh start over an old run
    proc = cli("generate", old, "--out", tmp_path / "g.png", check_rc=2)
    assert "gandist checkpoint convert" in proc.stderr
    assert "--trusted" in cli("checkpoint", "convert", old, check_rc=2).stderr
    out = cli("checkpoint", "convert", old, "--trusted").stdout
    assert "converted 1 checkpoint(s)" in out and "step-00000002" in out
    manifest = json.loads((old / "checkpoints" / "step-00000002" / "manifest.json").read_text())
    assert manifest["format"] == FORMAT_VERSION
    _train(old, 4)  # resumes from the converted step 2, RNG streams included: bitwise the straight run
    a, b = gandist.load_run(str(straight)), gandist.load_run(str(old))
    for key, value in a.G.state_dict().items():
        assert torch.equal(value, b.G.state_dict()[key]), key
