import atexit
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGENET = ROOT.parent / "shared" / "data" / "imagenet-samples"
FASHION = Path("/usr/share/datasets/fashion-mnist")
TINY_RECIPE = ROOT / "tests" / "recipes" / "tiny_fashion.yaml"

os.environ.setdefault("EDGECV_ENGINE_CACHE", "/tmp/edgecv-test-engines")
# verify records and compiled-model caches of this run only: a record from an earlier run (or the user's
# ~/.cache/edgecv) for a byte-identical bundle would change what `--backend auto` opens
os.environ["EDGECV_CACHE"] = tempfile.mkdtemp(prefix="edgecv-test-cache-")
# removed when the test run ends (every run used to leave one behind in /tmp: 122 of them after a day's work)
atexit.register(shutil.rmtree, os.environ["EDGECV_CACHE"], ignore_errors=True)
# A test run started as a background job of a non-interactive shell (`pytest &`) inherits SIGINT ignored, and so
# would every child it starts: the tests that Ctrl-C an `edgecv` child then wait on a signal it never sees (a
# handler, unlike SIG_IGN, is reset to the default across exec, so the children get Python's own Ctrl-C again)
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config):
    try:  # the TensorRT 8.6 environment (Python 3.10, tests/test_calibrator.py) has no torch
        import torch
    except ImportError:
        return
    torch.set_num_threads(2)



def mobilenet_caltech_source(tmp_path: Path, calib_dir: Path) -> Tuple[Path, Path]:
    """(recipe, checkpoint) in ``tmp_path``: a seeded random MobileNetV2 with a 101-class head, and the Caltech-101
    transfer recipe at 64 px exporting it (24 calibration images from ``calib_dir``, 40 judged, no budget, ONNX
    Runtime only)."""
    import torch
    import yaml
    from torchvision.models import mobilenet_v2

    from edgecv.models.checkpoint import make_checkpoint, save_checkpoint

    recipe = yaml.safe_load((ROOT / "recipes" / "transfer_lite0_caltech101.yaml").read_text())
    recipe["model"] = {"name": "mobilenet_v2", "num_classes": 101}
    recipe["data"].update(path=str(ROOT / recipe["data"]["path"]), input_size=64, resize=73)
    recipe["export"] = {"calib": str(calib_dir), "calib_samples": 24, "eval_limit": 40, "max_drop": 100.0,
                        "min_agreement": 0.0, "targets": ["onnxruntime"], "corruptions": "none"}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    classes = sorted(p.name for p in (ROOT / recipe["data"]["path"]).iterdir() if p.is_dir())
    torch.manual_seed(0)
    save_checkpoint(make_checkpoint(mobilenet_v2(num_classes=101).eval(), "mobilenet_v2", {}, classes,
                                    {"input_size": 64}), tmp_path / "m.pt")
    return tmp_path / "r.yaml", tmp_path / "m.pt"


def export_mobilenet_caltech(tmp_path: Path, calib_dir: Path, flags: dict) -> Path:
    """Export :func:`mobilenet_caltech_source` with the export ``flags``; returns the bundle folder."""
    from edgecv.export.pipeline import export_bundle

    recipe, ckpt = mobilenet_caltech_source(tmp_path, calib_dir)
    out = tmp_path / "bundle"
    export_bundle(str(recipe), str(out), flags, [f"checkpoint={ckpt}"], show_progress=False)
    return out


@pytest.fixture(scope="session")
def imagenet_dir():
    if not IMAGENET.is_dir():
        pytest.fail(f"{IMAGENET} missing: the shared ImageNet samples are part of the test set-up")
    return IMAGENET


class Lite0Photos:
    """Pretrained Lite0 as ONNX (``fp32``), 100 ImageNet samples to calibrate on (``cal``), 100 others to judge
    (``held``) and the fp32 logits on those (``ref``). ``nearest_kl(target)``: the mean KL to fp32 of that target's
    int8 from nearest rounding without bias correction, the baseline both weight-rounding tests beat (computed once
    per target for the session)."""

    def __init__(self, folder: Path, imagenet_dir: Path):
        import numpy as np

        from edgecv.export.gates import onnx_logits
        from edgecv.export.onnx_export import export_onnx
        from edgecv.models import create_model
        from edgecv.runtime.preprocess import Preprocessor, load_image

        self.folder, self.fp32 = folder, folder / "lite0.onnx"
        export_onnx(create_model("efficientnet_lite0", pretrained=True).eval(), self.fp32, (3, 224, 224))
        pre = Preprocessor({"input_size": 224, "resize": 256, "crop": 224, "channels": 3, "mean": [127 / 255] * 3,
                            "std": [128 / 255] * 3})
        x = np.stack([pre(load_image(str(f), 3)) for f in sorted(imagenet_dir.rglob("*.JPEG"))[:200]])
        self.cal, self.held = x[:100], x[100:]
        self.ref = onnx_logits(self.fp32, self.held)
        self._nearest, self._kl = None, {}

    def kl(self, calibration, target: str, name: str) -> float:
        """Mean KL to fp32 on ``held`` of ``target``'s int8 quantized with ``calibration``."""
        from edgecv import targets
        from edgecv.export.gates import onnx_logits
        from edgecv.export.quantize import quantize
        from edgecv.metrics import mean_kl

        out = self.folder / f"{target}_{name}.onnx"
        quantize(self.fp32, calibration, out, target)
        return mean_kl(self.ref, onnx_logits(out, self.held, target=targets.get(target)))

    def nearest_kl(self, target: str) -> float:
        from edgecv.export.quantize import calibrate

        if self._nearest is None:
            self._nearest = calibrate(self.fp32, self.cal, "minmax", bias_correction=False)
        if target not in self._kl:
            self._kl[target] = self.kl(self._nearest, target, "nearest")
        return self._kl[target]


@pytest.fixture(scope="session")
def lite0_photos(tmp_path_factory, imagenet_dir) -> Lite0Photos:
    return Lite0Photos(tmp_path_factory.mktemp("lite0"), imagenet_dir)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny CNN trained for 2 epochs on 2,000 Fashion-MNIST images (seconds)."""
    from edgecv.recipe import load_recipe
    from edgecv.train.loop import train

    out = tmp_path_factory.mktemp("tiny_run")
    recipe = load_recipe(TINY_RECIPE, ["train.epochs=1"])
    train(recipe, out, show_progress=False)
    return out / "model.pt"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_ckpt):
    """A full export (prune + distill + int8 for both targets) of the tiny recipe."""
    from edgecv.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(str(TINY_RECIPE), str(out), {"distill_epochs": 1},
                  [f"checkpoint={tiny_ckpt}", "data.train_limit=1000"], show_progress=False)
    return out


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def resign(bundle, edit=None):
    """What anyone can do to a bundle without a key: edit the manifest, recompute every sha256 and size and
    the manifest's self-checksum (the tampering that only a signature catches)."""
    import json

    from edgecv.bundle.manifest import manifest_bytes
    from edgecv.utils.io import sha256_file

    m = json.loads((Path(bundle) / "manifest.json").read_text())
    if edit:
        edit(m)
    for name, info in m["files"].items():
        p = Path(bundle) / name
        info["sha256"], info["size"] = sha256_file(p), p.stat().st_size
    (Path(bundle) / "manifest.json").write_bytes(manifest_bytes(m))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A real UNIX datagram socket standing in for systemd's NOTIFY_SOCKET, with WatchdogSec=0.2 (pings every
    0.1 s); returns ``collect(seconds, after_ready=False)``: the messages received, as ``(monotonic time, text)``."""
    import socket
    import time

    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    def collect(seconds, after_ready=False):
        """``after_ready``: first wait (up to 60 s) for READY=1, then collect ``seconds`` from then on: a loop's
        start-up (opening the bundle, warming the engine) on a loaded 2-core machine is not part of the window."""
        got = []
        if after_ready:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(m.startswith("READY=1") for _, m in got):
                try:
                    got.append((time.monotonic(), srv.recv(256).decode()))
                except socket.timeout:
                    pass
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                got.append((time.monotonic(), srv.recv(256).decode()))
            except socket.timeout:
                pass
        return got

    yield collect
    srv.close()


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = tmp_path_factory.mktemp("keys")
    for name in ("dev", "other"):
        k = ec.generate_private_key(ec.SECP256R1())
        (d / f"{name}.pem").write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        (d / f"{name}.pub").write_bytes(k.public_key().public_bytes(serialization.Encoding.PEM,
                                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
    return d


def release(tiny_bundle, dst, n):
    """A copy of the tiny bundle as release ``n``."""
    shutil.copytree(tiny_bundle, dst)
    resign(dst, lambda m: m.update(release=n))
    return dst


def unanswerable_golden(bundle):
    """Golden logits that no precision can agree with (each row's classes rolled by one), under the strictest valid
    budget: acceptance must fail."""
    import numpy as np

    g = bundle / "golden.npz"
    with np.load(g) as z:
        d = dict(z)
    d["logits"] = np.roll(d["logits"], 1, axis=1)
    np.savez_compressed(g, **d)
    resign(bundle, lambda m: m["golden"]["budget"].update(min_agreement=1.0, max_drop=0.0))


def invoke(*args):
    """``edgecv ARGS`` in this process; a traceback (an exception other than SystemExit) fails the test."""
    from click.testing import CliRunner

    from edgecv.cli import cli

    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


def kill_install_at(stage, bundle, root, tmp_path):
    """``edgecv install BUNDLE --root ROOT`` in a real process, SIGKILLed 0.3 s after it reports ``stage``."""
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EDGECV_INSTALL_PAUSE": stage, "EDGECV_INSTALL_PAUSE_S": "60",
           "EDGECV_CACHE": os.environ.get("EDGECV_CACHE", str(tmp_path / "c")),
           "XDG_CONFIG_HOME": os.environ.get("XDG_CONFIG_HOME", str(tmp_path / "config"))}
    p = subprocess.Popen([sys.executable, "-m", "edgecv", "install", str(bundle), "--root", str(root)],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    for line in p.stderr:
        if line.startswith(f"[edgecv install] {stage}"):
            time.sleep(0.3)
            p.send_signal(signal.SIGKILL)
            break
    p.wait(60)
    assert p.returncode == -9
