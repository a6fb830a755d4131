"""Engine-cache key logic. There is no GPU here: keys are built with fake device names (said in the names)."""
import importlib.util

import pytest

from edgecv.runtime.tensorrt.engine_build import EngineKey, lookup, store


def key(**kw):
    base = dict(model_sha256="ab" * 32, trt_version="10.3.0", gpu="fake-Orin", compute_capability="8.7",
                precision="int8-qdq", dla_core=-1)
    base.update(kw)
    return EngineKey(**base)


def test_fake_gpu_cache_hit_and_miss(tmp_path):
    k = key()
    assert lookup(tmp_path, k) == (None, "no cached engine")
    p = store(tmp_path, k, b"PLAN-BYTES", {"file": "model_int8_trt.onnx"})
    assert lookup(tmp_path, k) == (p, "")


@pytest.mark.parametrize("change", [{"trt_version": "10.4.0"}, {"gpu": "fake-Xavier", "compute_capability": "7.2"}])
def test_fake_gpu_key_change_rebuilds(tmp_path, change):
    store(tmp_path, key(), b"PLAN", {})
    hit, why = lookup(tmp_path, key(**change))
    assert hit is None and "rebuilding" in why
    for field, new in change.items():
        assert f"{field}: {getattr(key(), field)} -> {new}" in why


def test_fake_gpu_precision_and_dla_get_own_slots(tmp_path):
    store(tmp_path, key(), b"A", {})
    assert lookup(tmp_path, key(precision="int8-calib", dla_core=0)) == (None, "no cached engine")


def test_fake_gpu_corrupt_engine_not_loaded(tmp_path):
    p = store(tmp_path, key(), b"PLAN", {})
    p.write_bytes(b"PLAX")
    hit, why = lookup(tmp_path, key())
    assert hit is None and "checksum mismatch" in why


def test_a_timing_cache_path_that_is_no_file_is_refused_before_tensorrt_is_needed(tiny_bundle, tmp_path):
    """The build reads --timing-cache, then replaces it with its own: /dev/zero would be read for ever and, as
    root, replaced by a file. Refused before TensorRT is even looked for, so it is tested here without one."""
    from conftest import invoke

    (tmp_path / "folder").mkdir()
    for path, why in (("/dev/zero", "a device, pipe or socket, not a timing cache file"),
                      (tmp_path / "folder", "a folder, not a timing cache file"),
                      (tmp_path / "no" / "x.cache", f"folder {tmp_path / 'no'} does not exist")):
        r = invoke("build", tiny_bundle, "--timing-cache", path)
        assert r.exit_code == 2 and f"--timing-cache {path}: {why}" in r.output, r.output
    if importlib.util.find_spec("tensorrt") is None:  # a new file passes the check, on to TensorRT (absent here)
        r = invoke("build", tiny_bundle, "--timing-cache", tmp_path / "new.cache")
        assert r.exit_code == 2 and "--timing-cache" not in r.output and "TensorRT is not installed" in r.output

