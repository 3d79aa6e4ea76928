"""One writer per run dir: a live lease refuses a second `gandist train`; stale ones and --takeover take it over."""
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from gandist.config import load_config
from gandist.errors import UserError
from gandist.orchestrate.ray_train import ray_lease_owner
from gandist.train.lease import Lease, LeaseHeld, lease_url
from gandist.train.loop import run_training

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["model.arch=mlp", "model.hidden=8", "model.depth=1", "train.batch_size=8", "telemetry.progress=false",
        "telemetry.sample_every=0", "checkpoint.every=5", "checkpoint.keep_last=2"]

# the moto S3 server fixture of the data tests (tests/data/conftest.py), reused here
sys.path.insert(0, os.path.join(REPO, "tests", "data"))
_spec = importlib.util.spec_from_file_location("data_conftest", os.path.join(REPO, "tests", "data", "conftest.py"))
_data_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_data_conftest)
moto_endpoint, s3_bucket = _data_conftest.moto_endpoint, _data_conftest.s3_bucket


def _record(lease: Lease) -> dict:
    return json.loads(open(lease.path).read())


def _write_foreign(path, heartbeat_age: float, pid: int = 4242, owner: str = "otherhost:4242:abcd") -> None:
    now = time.time()
    with open(path, "w") as f:
        json.dump({"owner": owner, "host": "otherhost", "pid": pid, "start": now - 600,
                   "heartbeat": now - heartbeat_age, "timeout_s": 120}, f)


def test_live_lease_is_refused_naming_owner_and_takeover(tmp_path):
    path = tmp_path / "lease.json"
    _write_foreign(path, heartbeat_age=5)
    with pytest.raises(LeaseHeld) as err:
        Lease(str(path), timeout_s=120).acquire()
    message = str(err.value)
    assert "host otherhost pid 4242" in message and "since" in message and "--takeover" in message
    assert _record(Lease(str(path), 120))["owner"] == "otherhost:4242:abcd"  # untouched


def test_stale_lease_is_taken_over_with_a_warning(tmp_path, caplog):
    path = tmp_path / "lease.json"
    _write_foreign(path, heartbeat_age=200)
    lease = Lease(str(path), timeout_s=120)
    with caplog.at_level(logging.WARNING, "gandist.lease"):
        lease.acquire()
    assert "is stale" in caplog.text and "otherhost" in caplog.text
    record = _record(lease)
    assert record["owner"] == lease.owner and record["pid"] == os.getpid()
    assert time.time() - record["heartbeat"] < 5


def test_takeover_flag_takes_a_live_lease_and_the_old_holder_notices(tmp_path, caplog):
    path = tmp_path / "lease.json"
    first = Lease(str(path), timeout_s=120)
    first.acquire()
    second = Lease(str(path), timeout_s=120)
    with caplog.at_level(logging.WARNING, "gandist.lease"):
        second.acquire(takeover=True)
    assert "--takeover" in caplog.text
    assert first.heartbeat() is False and first.lost["owner"] == second.owner
    with pytest.raises(LeaseHeld, match="taken over"):
        first.check()
    first.release()  # not ours any more: left in place
    assert _record(second)["owner"] == second.owner
    second.release()
    assert not path.exists()


def test_heartbeat_thread_refreshes_the_lease(tmp_path):
    lease = Lease(str(tmp_path / "lease.json"), timeout_s=0.4)
    lease.acquire()
    first = lease.last_heartbeat(_record(lease))
    lease.start()
    time.sleep(0.5)
    assert lease.last_heartbeat(_record(lease)) > first
    lease.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # lease and heartbeat file both gone


def test_a_heartbeat_racing_a_takeover_never_overwrites_it(tmp_path):
    """The race CI found: the holder reads the lease (still its own), a takeover lands, the holder writes its
    heartbeat. The heartbeat goes to the holder's own file, so the lease still names the new owner."""
    path = tmp_path / "lease.json"
    first, second = Lease(str(path), timeout_s=120), Lease(str(path), timeout_s=120)
    first.acquire()
    assert first._still_ours()  # the heartbeat's read
    second.acquire(takeover=True)  # lands between the read and the write
    first._beat()  # the heartbeat's write
    assert _record(second)["owner"] == second.owner
    assert first.heartbeat() is False and first.lost["owner"] == second.owner
    # and with the heartbeat thread beating as fast as it can while the takeover happens
    third = Lease(str(path), timeout_s=0.001)
    third.acquire(takeover=True)
    third.start()
    time.sleep(0.05)
    fourth = Lease(str(path), timeout_s=120)
    fourth.acquire(takeover=True)
    deadline = time.time() + 30  # the beating thread notices at its next beat (a loaded machine may delay it)
    while third.lost is None and time.time() < deadline:
        time.sleep(0.01)
    assert _record(fourth)["owner"] == fourth.owner and third.lost["owner"] == fourth.owner
    with pytest.raises(LeaseHeld, match="taken over"):
        third.check()
    third.release()
    assert _record(fourth)["owner"] == fourth.owner


def test_check_reads_the_lease_itself(tmp_path):
    """Before a checkpoint save: a takeover the heartbeat thread has not seen yet still stops the holder."""
    path = tmp_path / "lease.json"
    first = Lease(str(path), timeout_s=120)
    first.acquire()
    first.check()  # still ours: no error
    Lease(str(path), timeout_s=120).acquire(takeover=True)
    with pytest.raises(LeaseHeld, match="taken over"):
        first.check()


def test_a_restart_of_the_same_ray_run_takes_its_own_live_lease(tmp_path):
    path = str(tmp_path / "lease.json")
    owner = ray_lease_owner(str(tmp_path) + "/")
    Lease(path, 120, owner=owner).acquire()  # the worker group that died, its heartbeat still fresh
    Lease(path, 120, owner=ray_lease_owner(str(tmp_path))).acquire()  # Ray's restart (or a re-run driver)
    with pytest.raises(LeaseHeld):
        Lease(path, 120).acquire()  # a plain `gandist train` on the same run dir is still refused


def test_lease_lives_where_the_checkpoints_go(tmp_path):
    assert lease_url(load_config(None, []), str(tmp_path)) == f"{tmp_path}/lease.json"
    cfg = load_config(None, ["checkpoint.url=s3://bucket/ckpts/"])
    assert lease_url(cfg, str(tmp_path)) == "s3://bucket/ckpts/lease.json"


@pytest.mark.slow  # a moto server
def test_lease_on_s3_via_moto(moto_endpoint, s3_bucket, tmp_path, monkeypatch):
    options = {"endpoint_url": moto_endpoint}
    url = f"s3://{s3_bucket}/run/lease.json"
    first = Lease(url, timeout_s=120, storage_options=options)
    first.acquire()
    assert first.read()["owner"] == first.owner
    with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):
        Lease(url, timeout_s=120, storage_options=options).acquire()
    before = first.last_heartbeat(first.read())
    time.sleep(0.05)
    assert first.heartbeat() and first.last_heartbeat(first.read()) > before
    first.release()
    assert first.read() is None

    # a whole run whose checkpoints (and so its lease) live in the bucket: held while it trains, released at the end
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    ckpt_url = f"s3://{s3_bucket}/ckpts"
    cfg = load_config(None, TINY + ["train.steps=5", f"checkpoint.url={ckpt_url}"])
    Lease(f"{ckpt_url}/lease.json", 120, storage_options=options).acquire()  # someone else's live lease
    with pytest.raises(LeaseHeld):
        run_training(cfg, str(tmp_path / "run"))
    assert list((tmp_path / "run").iterdir()) == []  # refused before any file was written
    run_training(cfg, str(tmp_path / "run"), takeover=True)
    probe = Lease(f"{ckpt_url}/lease.json", 120, storage_options=options)
    assert probe.read() is None  # released when the run ended
    assert probe.fs.exists(f"{s3_bucket}/ckpts/step-00000005/manifest.json")


def _env():
    return {**os.environ, "PYTHONPATH": REPO}


def _popen_train(run_dir, *extra):
    config = run_dir.parent / "lease.yaml"
    config.write_text("name: lease-test\n")
    argv = [sys.executable, "-m", "gandist", "train", str(config), "--run-dir", str(run_dir)]
    for item in TINY + ["train.steps=1000000", "checkpoint.lease_timeout_s=3", *extra]:
        argv += ["--set", item]
    return argv


def _start(argv, log):
    """A training process whose output goes to a file (a pipe nobody reads would fill and block it)."""
    return subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=open(log, "w"), text=True)


def _wait(predicate, timeout: float, what: str, proc=None, log=None) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exit {proc.returncode} while waiting for {what}: {open(log).read()[-3000:]}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _lease_pid(run_dir):
    try:
        return json.loads((run_dir / "lease.json").read_text())["pid"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


@pytest.mark.slow  # three real training processes
def test_second_train_refused_takeover_stops_the_first_and_sigkill_goes_stale(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    first_log, takeover_log = tmp_path / "first.log", tmp_path / "takeover.log"
    first = _start(_popen_train(run), first_log)
    takeover = None
    try:
        _wait(lambda: _lease_pid(run) == first.pid and (run / "checkpoints" / "latest").exists(), 120,
              "the first run's lease and checkpoint", first, first_log)
        # a second real `gandist train`: refused before it writes anything, one line naming the owner, exit 2
        events_before = (run / "events.jsonl").read_text().count('"start"')
        second = subprocess.run(_popen_train(run), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        line = second.stderr.strip().splitlines()[-1]
        assert f"pid {first.pid}" in line and "since" in line and "--takeover" in line
        assert (run / "events.jsonl").read_text().count('"start"') == events_before
        assert first.poll() is None  # the first run trains on

        # --takeover: the new run holds the lease; the first one stops at its next checkpoint with exit 2
        takeover = _start(_popen_train(run) + ["--takeover"], takeover_log)
        _wait(lambda: _lease_pid(run) == takeover.pid, 120, "the takeover run's lease", takeover, takeover_log)
        first.wait(60)
        assert first.returncode == 2, first_log.read_text()[-3000:]
        assert "taken over" in first_log.read_text().strip().splitlines()[-1]

        # SIGKILL of the holder: its lease stays behind, and a new run takes it over once it is stale
        _wait(lambda: (run / "events.jsonl").read_text().count('"start"') > events_before, 60, "takeover start",
              takeover, takeover_log)
        takeover.send_signal(signal.SIGKILL)
        takeover.wait(30)
        assert _lease_pid(run) == takeover.pid
        time.sleep(3.5)  # > checkpoint.lease_timeout_s=3
        argv = _popen_train(run)
        argv[argv.index("train.steps=1000000")] = "train.steps=1"  # resumes past step 1: ends at once
        after = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
        assert after.returncode == 0, after.stderr[-3000:]
        assert "is stale" in after.stderr and f"pid {takeover.pid}" in after.stderr
        assert not (run / "lease.json").exists()  # released at the normal end
    finally:
        for proc in (first, takeover):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)


def test_a_run_releases_its_lease_at_the_end_and_a_refusal_writes_nothing(tmp_path):
    run_training(load_config(None, TINY + ["train.steps=2"]), str(tmp_path / "run"))
    assert not (tmp_path / "run" / "lease.json").exists()
    _write_foreign(tmp_path / "run" / "lease.json", heartbeat_age=1)
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(UserError, match="in use by host otherhost"):
        run_training(load_config(None, TINY + ["train.steps=4"]), str(tmp_path / "run"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
