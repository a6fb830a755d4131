"""The cache lock that keeps OpenVINO compiles one at a time across processes (two at once rewrote a compiled-model
file another process had mapped, which died of SIGBUS): a second process waits for the first, and still sees
SIGTERM while it waits."""
import os
import signal
import subprocess
import sys
import time

from edgecv.utils.cache import cache_lock

CHILD = ("import sys, time; from edgecv.utils.cache import cache_lock\n"
         "with cache_lock('openvino'):\n"
         "    print(time.time(), flush=True)\n")


def _child(env):
    return subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_second_process_waits_for_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECV_CACHE", str(tmp_path))
    env = {**os.environ, "EDGECV_CACHE": str(tmp_path)}
    with cache_lock("openvino"):
        p = _child(env)
        time.sleep(1.0)
        released = time.time()
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert float(out.strip()) >= released  # it got the lock only after this process let go
    with cache_lock("openvino"):  # and the lock is free again
        pass


def test_a_waiter_still_sees_sigterm(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECV_CACHE", str(tmp_path))
    with cache_lock("openvino"):
        p = _child({**os.environ, "EDGECV_CACHE": str(tmp_path)})
        time.sleep(1.0)
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=10)
    assert p.returncode == -signal.SIGTERM


def test_an_unusable_cache_is_named_and_openvino_runs_without_it(tmp_path, monkeypatch, caplog):
    """The cache root under a regular file: no lock to take; OpenVINO, whose cache only saves compile time, says
    which folder it cannot use and runs without it (it used to fail to compile)."""
    import logging

    import numpy as np
    from torch import nn

    from edgecv.export.onnx_export import export_onnx
    from edgecv.runtime.backends.openvino import OpenVinoBackend

    export_onnx(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).eval(), tmp_path / "m.onnx", (3, 8, 8))
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("EDGECV_CACHE", str(tmp_path / "file" / "cache"))
    with caplog.at_level(logging.WARNING, logger="edgecv.runtime"):
        out = OpenVinoBackend(str(tmp_path / "m.onnx")).infer(np.zeros((1, 3, 8, 8), np.float32))
    assert np.asarray(out).shape[0] == 1
    assert "file/cache/openvino: cannot use this cache folder" in caplog.text and "EDGECV_CACHE" in caplog.text
