"""Bad input as a user types it: one line that names the file, key or folder, exit code 2, nothing written."""
import os

import pytest


def one_line_error(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {arch: mlp\n  width: [1,\n")
    run_dir = tmp_path / "run"
    line = one_line_error(cli("train", bad, "--run-dir", run_dir, check_rc=2))
    assert line.startswith(f"gandist: error: {bad}:3:8: not valid YAML: "), line
    assert not run_dir.exists()


def test_missing_data_folder_writes_nothing(tmp_path, cli):
    run_dir = tmp_path / "run"
    line = one_line_error(cli("train", "configs/demo_digits.yaml", "--set",
                              "data={kind: folder, path: /nonexistent/imgs}", "--run-dir", run_dir, check_rc=2))
    assert "data.path" in line and "/nonexistent/imgs" in line
    assert not run_dir.exists()


def test_missing_shards_write_nothing(tmp_path, cli):
    run_dir = tmp_path / "run"
    pattern = str(tmp_path / "no-such" / "train-{000000..000003}.tar")
    line = one_line_error(cli("train", "configs/demo_digits.yaml", "--set", f"data={{kind: webdataset, urls: '{pattern}'}}",
                              "--run-dir", run_dir, check_rc=2))
    assert "data.urls" in line and "matches no existing shard" in line
    assert not run_dir.exists()


@pytest.mark.parametrize("where", ["under_a_file", "under_proc"])
def test_run_dir_that_cannot_be_created_is_named(tmp_path, cli, where):
    if where == "under_a_file":
        (tmp_path / "a_file").write_text("")
        run_dir = tmp_path / "a_file" / "run"
    else:
        run_dir = "/proc/gandist-run"  # procfs refuses new folders, even to root
    line = one_line_error(cli("train", "configs/toy_ring8_tiny.yaml", "--set", "train.steps=1",
                              "--run-dir", run_dir, check_rc=2))
    assert f"--run-dir {run_dir}: cannot be created" in line and "writable folder" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the check is for other users")
def test_read_only_run_dir_is_refused(tmp_path, cli):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    line = one_line_error(cli("train", "configs/toy_ring8_tiny.yaml", "--set", "train.steps=1",
                              "--run-dir", ro, check_rc=2))
    assert "not writable" in line
