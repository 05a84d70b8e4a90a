"""distribute=multi_worker: TF_CONFIG checks, and two CPU workers on 127.0.0.1 that train like
one process on the same global batch (tests/multi_worker_worker.py is one process)."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import tensorflow as tf

from chestkd.errors import ConfigError
from chestkd.training.distribute import (distribution_strategy, is_chief, read_tf_config,
                                         remove_worker_dir, worker_run_dir)

HERE = Path(__file__).resolve().parent
WORKER = HERE / "multi_worker_worker.py"
TIMEOUT = 300  # seconds for the three processes together; CI never hangs on a lost peer


# ------------------------------------------------------------------ TF_CONFIG checks
def test_missing_or_malformed_tf_config_is_a_config_error_naming_it(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG environment variable.*not set"):
        distribution_strategy("multi_worker")
    bad = {
        "{not json": "not valid JSON",
        "[1, 2]": "must be a JSON object",
        '{"task": {"type": "worker", "index": 0}}': "no 'cluster'",
        '{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}': "no 'worker'",
        '{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}':
            "host:port",
        '{"cluster": {"worker": ["a:1", "b:2"]}}': "no 'task'",
        '{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}':
            "task type 'chief' is not in the cluster",
        '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}':
            r"task index 2 is not one of 0\.\.\.1",
    }
    for text, message in bad.items():
        with pytest.raises(ConfigError, match=message) as error:
            read_tf_config({"TF_CONFIG": text})
        assert "TF_CONFIG" in str(error.value) and '"cluster"' in str(error.value)
    good = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
            "task": {"type": "worker", "index": 1}}
    assert read_tf_config({"TF_CONFIG": json.dumps(good)}) == good
    with pytest.raises(ConfigError, match="auto, none, mirrored or multi_worker"):
        distribution_strategy("horovod")


class FakeMultiWorker:
    """Just what is_chief / worker_run_dir read of a MultiWorkerMirroredStrategy."""

    def __init__(self, task_type, task_id, cluster):
        self.extended = SimpleNamespace(_in_multi_worker_mode=lambda: True)
        self.cluster_resolver = SimpleNamespace(
            task_type=task_type, task_id=task_id,
            cluster_spec=lambda: SimpleNamespace(as_dict=lambda: cluster))


def test_non_chief_workers_write_into_a_temporary_folder_seeded_for_resume(tmp_path):
    workers = {"worker": ["a:1", "b:1", "c:1"]}
    chief, other = FakeMultiWorker("worker", 0, workers), FakeMultiWorker("worker", 2, workers)
    assert is_chief(chief) and not is_chief(other) and is_chief(tf.distribute.get_strategy())
    with_chief = {"chief": ["a:1"], "worker": ["b:1"]}
    assert is_chief(FakeMultiWorker("chief", 0, with_chief))
    assert not is_chief(FakeMultiWorker("worker", 0, with_chief))
    run_dir = tmp_path / "run-1"
    (run_dir / "backup").mkdir(parents=True)
    (run_dir / "backup" / "training_metadata.json").write_text('{"epoch": 3}')
    (run_dir / "best.json").write_text('{"value": 0.7}')
    assert worker_run_dir(run_dir, chief) == run_dir
    assert worker_run_dir(run_dir, tf.distribute.get_strategy()) == run_dir
    folder = worker_run_dir(run_dir, other)
    assert folder != run_dir and "worker2" in folder.name and folder.parent != run_dir.parent
    # a resumed run: the worker restores the chief's backup, so all resume at one epoch
    assert (folder / "backup" / "training_metadata.json").read_text() == '{"epoch": 3}'
    assert (folder / "best.json").exists()
    remove_worker_dir(run_dir, run_dir)
    assert run_dir.exists()
    remove_worker_dir(folder, run_dir)
    assert not folder.exists()


# ---------------------------------------------------------------- two CPU workers
def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def write_data(folder: Path, n_train=16, n_val=8, size=8, classes=3):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n_train + n_val):
        path = folder / f"img{i:02d}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (size, size), dtype=np.uint8))
        paths.append(str(path))
    labels = (rng.random((n_train + n_val, classes)) < 0.4).astype(np.float32)
    labels[:2, 1] = -1.0  # unknown labels are masked the same way under the strategy
    labels[0, 0], labels[1, 0] = 1.0, 0.0  # every class has a positive and a negative
    labels[n_train, :], labels[n_train + 1, :] = 1.0, 0.0
    split = ["train"] * n_train + ["val"] * n_val
    (folder / "data.json").write_text(json.dumps(
        {"paths": paths, "labels": labels.tolist(), "split": split}))
    for name, n in (("train", n_train), ("val", n_val)):  # cached teacher logits (N, 2, C)
        np.save(folder / f"teacher_{name}.npy",
                rng.normal(0, 2, (n, 2, classes)).astype(np.float32))


def _environment(tf_config=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]))
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def run_processes(commands, logs: Path):
    """Run every (argv, env) at once; all must exit 0 within TIMEOUT seconds.

    A worker whose peer died waits for it forever, so once one process fails (or the time is
    up) the others are killed, and the failure shows every process's output.
    """
    processes, files = [], []
    for index, (argv, env) in enumerate(commands):
        files.append(open(logs / f"process{index}.log", "w+"))
        processes.append(subprocess.Popen(argv, env=env, stdout=files[-1],
                                          stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            codes = [process.poll() for process in processes]
            if all(code is not None for code in codes) or any(code for code in codes):
                break
            time.sleep(0.2)
        if any(process.poll() for process in processes):  # one failed: give the rest a moment
            time.sleep(5)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    report = []
    for index, (process, handle) in enumerate(zip(processes, files)):
        handle.seek(0)
        report.append(f"--- process {index} ({' '.join(commands[index][0][2:3])}) exit "
                      f"{process.returncode}:\n{handle.read()[-3000:]}")
        handle.close()
    if any(process.returncode != 0 for process in processes):
        pytest.fail("multi-worker processes failed or ran past "
                    f"{TIMEOUT} s (exit -9: killed):\n" + "\n".join(report))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Results of one process and of each of two workers on the same data and global batch."""
    root = tmp_path_factory.mktemp("multi_worker")
    data = root / "data"
    data.mkdir()
    write_data(data)
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    commands = [([sys.executable, str(WORKER), "single", str(data), str(root / "single"),
                  str(root / "single.json")], _environment())]
    for index in range(2):
        commands.append(([sys.executable, str(WORKER), "worker", str(data),
                          str(root / "cluster"), str(root / f"worker{index}.json")],
                         _environment({"cluster": cluster,
                                       "task": {"type": "worker", "index": index}})))
    run_processes(commands, root)  # together: the workers mostly wait for each other
    return {name: json.loads((root / f"{name}.json").read_text())
            for name in ("single", "worker0", "worker1")}, root


@pytest.mark.parametrize("part", ["classifier", "distiller"])
def test_two_workers_train_like_one_process_on_the_same_global_batch(trained, part):
    results, _ = trained
    one = results["single"][part]
    assert results["worker0"]["replicas"] == 2 and results["single"]["replicas"] == 1
    for worker in ("worker0", "worker1"):
        many = results[worker][part]
        assert len(many["steps"]) == len(one["steps"]) == 4  # 16 images / global batch 8 x 2
        assert set(many["history"]) == set(one["history"])
        for key in one["history"]:
            if key == "epoch_seconds":
                continue
            np.testing.assert_allclose(many["history"][key], one["history"][key], rtol=1e-5,
                                       atol=1e-6, err_msg=f"{worker} {part} {key}")
        for step, (a, b) in enumerate(zip(many["steps"], one["steps"])):
            # Per-step logs are each worker's own metric results averaged over the workers
            # (epoch logs read the summed metric state): the same for a mean loss over equal
            # shares of the batch, not for an AUC, so per step only the losses compare.
            for key in (k for k in b if k.endswith("loss")):
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6,
                                           err_msg=f"{worker} {part} step {step} {key}")
        for a, b in zip(many["final_weights"], one["final_weights"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{worker} {part}")
    # it trained, so the equalities cover the updates
    assert any(np.abs(np.subtract(a, b)).max() > 1e-3
               for a, b in zip(one["final_weights"], one["initial_weights"]))


def test_only_the_chief_writes_the_run_directory(trained):
    results, root = trained
    assert results["worker0"]["chief"] and not results["worker1"]["chief"]
    for part in ("classifier", "distiller"):
        chief, other = results["worker0"][part], results["worker1"][part]
        assert Path(chief["folder"]) == root / "cluster" / part
        assert {"model.keras", "history.csv"} <= set(chief["written"])
        # the other worker wrote the same files into a temporary folder, since removed
        assert Path(other["folder"]).parent != root / "cluster"
        assert set(other["written"]) == set(chief["written"])
        assert not Path(other["folder"]).exists()
        assert sorted(os.listdir(root / "cluster")) == ["classifier", "distiller"]
