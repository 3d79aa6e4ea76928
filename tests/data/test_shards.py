"""The shard writer: manifest, checksums, resumable reruns, the three inputs, local / memory:// / s3:// outputs."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile

import fsspec
import numpy as np
import pytest
from PIL import Image

from gandist.data.shards import verify_shards, write_shards
from gandist.errors import UserError


def members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_digits_manifest_counts_and_checksums_match_the_shards(tmp_path):
    from sklearn.datasets import load_digits

    report = write_shards("digits", str(tmp_path), samples_per_shard=400, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert report.written == 5 and report.samples == 1797
    assert [s["samples"] for s in manifest["shards"]] == [400, 400, 400, 400, 197]
    assert manifest["classes"] == [str(c) for c in range(10)]
    assert manifest["pattern"] == "train-{000000..000004}.tar"
    for shard in manifest["shards"]:
        assert hashlib.sha256((tmp_path / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
    files = members(tmp_path / "train-000001.tar")
    digits = load_digits()
    image = np.asarray(Image.open(io.BytesIO(files["000000401.png"])))
    assert image.shape == (8, 8)
    assert np.array_equal(image, np.round(digits.images[401] * 255 / 16).astype(np.uint8))
    assert int(files["000000401.cls"]) == digits.target[401]
    assert json.loads(files["000000401.json"])["class"] == digits.target[401]


def test_rerun_skips_complete_shards_and_rewrites_damaged_ones(tmp_path):
    write_shards("digits", str(tmp_path), samples_per_shard=400, progress=False)
    (tmp_path / "train-000001.tar").write_bytes(b"half a shard")  # an interrupted or corrupted write
    (tmp_path / "train-000003.tar").unlink()
    (tmp_path / "manifest.json").unlink()  # written last: an interrupted run has none
    assert len(verify_shards(str(tmp_path))) == 1
    report = write_shards("digits", str(tmp_path), samples_per_shard=400, progress=False)
    assert (report.written, report.skipped) == (2, 3)
    assert verify_shards(str(tmp_path)) == []
    assert not list(tmp_path.glob(".*partial"))


def test_verify_names_each_shard_that_disagrees_with_the_manifest(tmp_path):
    write_shards("digits", str(tmp_path), samples_per_shard=900, progress=False)
    (tmp_path / "train-000000.tar").write_bytes(b"x")
    (tmp_path / "train-000001.tar").unlink()
    problems = verify_shards(str(tmp_path))
    assert len(problems) == 2
    assert "train-000000.tar: sha256" in problems[0] and problems[1].endswith("train-000001.tar: missing")


def test_npz_in_minus_one_one_nchw_is_written_as_uint8_with_resize(tmp_path):
    x = np.linspace(-1, 1, 4 * 3 * 16 * 16, dtype=np.float32).reshape(4, 3, 16, 16)
    np.savez(tmp_path / "data.npz", x=x, y=np.array([0, 1, 2, 1]))
    out = tmp_path / "out"
    report = write_shards(str(tmp_path / "data.npz"), str(out), samples_per_shard=3, resolution=8, fmt="jpg",
                          progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert report.samples == 4 and [s["samples"] for s in manifest["shards"]] == [3, 1]
    assert manifest["classes"] == ["0", "1", "2"] and manifest["image_ext"] == "jpg"
    files = members(out / "train-000001.tar")
    image = np.asarray(Image.open(io.BytesIO(files["000000003.jpg"])))
    assert image.shape == (8, 8, 3) and files["000000003.cls"] == b"1"


def test_folder_classes_are_sorted_subfolders(tmp_path):
    for name, value in (("zebra", 200), ("ant", 50)):
        (tmp_path / "in" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((12, 10, 3), value, np.uint8)).save(tmp_path / "in" / name / f"{i}.png")
    write_shards(str(tmp_path / "in"), str(tmp_path / "out"), samples_per_shard=10, resolution=8, progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["classes"] == ["ant", "zebra"] and manifest["num_samples"] == 6
    files = members(tmp_path / "out" / "train-000000.tar")
    assert files["000000000.cls"] == b"0" and files["000000005.cls"] == b"1"
    assert json.loads(files["000000005.json"])["origin"] == "zebra/2.png"
    assert np.asarray(Image.open(io.BytesIO(files["000000005.png"]))).mean() == 200


def test_memory_url_gets_shards_and_manifest(indexed_npz):
    write_shards(str(indexed_npz), "memory://wds-test", samples_per_shard=100, progress=False)
    fs = fsspec.filesystem("memory")
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("/wds-test", detail=False)) == [
        "manifest.json", "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert verify_shards("memory://wds-test") == []


def test_s3_write_then_rerun_uploads_nothing(moto_endpoint, s3_bucket, indexed_npz):
    opts = {"endpoint_url": moto_endpoint}
    url = f"s3://{s3_bucket}/indexed"
    first = write_shards(str(indexed_npz), url, samples_per_shard=100, storage_options=opts, progress=False)
    again = write_shards(str(indexed_npz), url, samples_per_shard=100, storage_options=opts, progress=False)
    assert (first.written, again.written, again.skipped) == (3, 0, 3)
    assert verify_shards(url, opts) == []
    assert first.pattern == f"{url}/train-{{000000..000002}}.tar"


@pytest.mark.parametrize("src, message", [("no/such/folder", "not found"), ("EMPTY", "no images")])
def test_bad_source_is_a_user_error_naming_it(tmp_path, src, message):
    if src == "EMPTY":
        src = str(tmp_path)
    with pytest.raises(UserError, match=message):
        write_shards(src, str(tmp_path / "out"), progress=False)


def test_cli_writes_verifies_and_reports_bad_input_in_one_line(tmp_path, capsys):
    from gandist.cli import main

    out = tmp_path / "out"
    assert main(["data", "shards", "digits", str(out), "--samples-per-shard", "1000", "--no-progress"]) == 0
    assert f"data.urls: {out}/train-{{000000..000001}}.tar" in capsys.readouterr().out
    assert main(["data", "verify", str(out)]) == 0
    (out / "train-000001.tar").write_bytes(b"damaged")
    capsys.readouterr()
    assert main(["data", "verify", str(out)]) == 2
    captured = capsys.readouterr()
    assert "train-000001.tar: sha256" in captured.out and "1 shard(s) disagree" in captured.err
    assert main(["data", "shards", str(tmp_path / "nope"), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gandist: error:") and "nope: not found" in err and len(err.splitlines()) == 1


@pytest.mark.slow  # a writer subprocess killed part way
def test_killed_writer_leaves_only_whole_shards_and_a_rerun_finishes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    code = ("import sys; from gandist.data.shards import write_shards; "
            "write_shards('digits', sys.argv[1], samples_per_shard=60, resolution=32, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)])
    deadline = time.time() + 120
    while len(list(out.glob("train-*.tar"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(out.glob("train-*.tar"))
    assert 3 <= len(finished) < 30 and not (out / "manifest.json").exists()
    for shard in finished:  # every shard under a real name is whole
        with tarfile.open(shard) as tar:
            assert len(tar.getnames()) == 3 * 60
    report = write_shards("digits", str(out), samples_per_shard=60, resolution=32, progress=False)
    assert report.skipped >= len(finished) and report.written + report.skipped == 30
    assert verify_shards(str(out)) == [] and not list(out.glob(".*partial"))
