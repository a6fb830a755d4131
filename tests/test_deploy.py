"""Deploy: signed bundles (interoperable with the reference model-signing tool), installs into A/B slots with
anti-rollback, kills in every install stage, rollback, status, and push over a real OpenSSH server started
on 127.0.0.1 by a fixture."""
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from conftest import FASHION, free_port, invoke, kill_install_at, release, resign, unanswerable_golden

from edgecv.bundle.reader import open_bundle


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("EDGECV_TRUST", raising=False)


# -- signing ----------------------------------------------------------------------------------------------------

def test_signed_bundle_opens_under_trust_and_tampering_is_refused(tiny_bundle, tmp_path, keys, monkeypatch):
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    assert invoke("sign", b, "--key", keys / "dev.pem").exit_code == 0
    monkeypatch.setenv("EDGECV_TRUST", str(keys / "dev.pub"))
    assert open_bundle(b).manifest
    (b / "labels.txt").write_text("\n".join(["x"] * 10) + "\n")  # tamper, then recompute every sha256
    resign(b)
    r = invoke("check", b)
    assert r.exit_code == 1 and "signature does not verify" in r.output and "labels.txt" in r.output
    monkeypatch.setenv("EDGECV_TRUST", str(keys / "other.pub"))
    shutil.rmtree(b)
    shutil.copytree(tiny_bundle, b)
    invoke("sign", b, "--key", keys / "dev.pem")
    r = invoke("eval", b, "--data", FASHION, "--limit", "5")
    assert r.exit_code == 2 and "does not verify with any trusted key" in r.output
    unsigned = tmp_path / "u"
    shutil.copytree(tiny_bundle, unsigned)
    r = invoke("--trust", keys / "dev.pub", "bench", unsigned)
    assert r.exit_code == 2 and "not signed" in r.output


def test_trusted_keys_folder_is_used(tiny_bundle, tmp_path, keys):
    folder = tmp_path / "config" / "edgecv" / "trusted-keys"
    folder.mkdir(parents=True)
    shutil.copy(keys / "other.pub", folder / "fleet.pem")
    unsigned = tmp_path / "u"
    shutil.copytree(tiny_bundle, unsigned)
    assert invoke("check", unsigned).exit_code == 1


def test_reference_tool_verifies_edgecv_signature_and_edgecv_verifies_its(tiny_bundle, tmp_path, keys, monkeypatch):
    a = tmp_path / "a"
    shutil.copytree(tiny_bundle, a)
    invoke("sign", a, "--key", keys / "dev.pem")
    ref = [sys.executable, "-m", "model_signing"]
    r = subprocess.run([*ref, "verify", "key", str(a), "--signature", str(a / "model.sig"), "--public_key",
                        str(keys / "dev.pub")], capture_output=True, text=True)
    assert r.returncode == 0 and "Verification succeeded" in r.stdout, r.stderr
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    r = subprocess.run([*ref, "sign", "key", str(b), "--signature", str(b / "model.sig"), "--private_key",
                        str(keys / "dev.pem")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    monkeypatch.setenv("EDGECV_TRUST", str(keys / "dev.pub"))
    assert invoke("check", b).exit_code == 0
    (b / "report.md").write_text("changed")
    assert invoke("check", b).exit_code == 1


# -- install, rollback, status ------------------------------------------------------------------------------------

def test_install_rollback_status_and_anti_rollback(tiny_bundle, tmp_path, keys, monkeypatch):
    root = tmp_path / "root"
    r1, r2 = release(tiny_bundle, tmp_path / "r1", 1), release(tiny_bundle, tmp_path / "r2", 2)
    for b in (r1, r2):
        invoke("sign", b, "--key", keys / "dev.pem")
    r = invoke("install", r1, "--root", root, "--trust", keys / "dev.pub", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output.strip().splitlines()[-1])
    assert rep["slot"] == "a" and rep["status"] == "active" and rep["release"] == 1
    assert {c["check"] for c in rep["checks"]} >= {"signature", "checksums", "release", "acceptance (golden vectors)"}
    assert json.loads(invoke("install", r2, "--root", root, "--json").output.strip().splitlines()[-1])["slot"] == "b"
    s = json.loads(invoke("status", "--root", root, "--json").output)
    assert (s["active"]["slot"], s["active"]["release"], s["previous"]["slot"], s["previous"]["release"]) == \
        ("b", 2, "a", 1)
    r = invoke("install", r1, "--root", root)
    assert r.exit_code == 2 and "release 1 is not newer than the installed 2" in r.output
    r = invoke("install", r2, "--root", root)  # equal is refused too
    assert r.exit_code == 2 and "anti-rollback" in r.output
    assert invoke("install", r1, "--root", root, "--allow-downgrade").exit_code == 0
    assert json.loads(invoke("status", "--root", root, "--json").output)["active"]["release"] == 1
    assert invoke("rollback", "--root", root).exit_code == 0
    s = json.loads(invoke("status", "--root", root, "--json").output)
    assert s["active"]["release"] == 2
    run = invoke("bench", root, "--iters", "3", "--json")  # an install root runs its active slot
    assert run.exit_code == 0 and json.loads(run.output)["artifact"]
    assert oct(os.stat(root).st_mode & 0o777) == "0o755"
    for p in (root / "slots" / "a").rglob("*"):
        assert p.stat().st_mode & 0o777 in (0o644, 0o755)
    failed = sorted((root / "reports").glob("*-failed.json"))
    assert len(failed) == 2 and "anti-rollback" in json.loads(failed[0].read_text())["error"]


def test_incompatible_or_unaccepted_bundle_is_not_installed(tiny_bundle, tmp_path):
    root = tmp_path / "root"
    good = release(tiny_bundle, tmp_path / "good", 1)
    assert invoke("install", good, "--root", root).exit_code == 0
    arm = release(tiny_bundle, tmp_path / "arm", 5)
    resign(arm, lambda m: m["compat"].update(arch=["riscv64"]))
    r = invoke("install", arm, "--root", root)
    assert r.exit_code == 2 and "cpu architecture" in r.output
    bad = release(tiny_bundle, tmp_path / "bad", 6)
    unanswerable_golden(bad)
    r = invoke("install", bad, "--root", root)
    assert r.exit_code == 2 and "acceptance test failed" in r.output
    s = json.loads(invoke("status", "--root", root, "--json").output)
    assert s["active"]["release"] == 1 and s["active"]["slot"] == "a"


@pytest.mark.parametrize("stage", ["verify", "copy", "acceptance", "switch"])
def test_install_killed_in_any_stage_keeps_the_previous_version(stage, tiny_bundle, tmp_path):
    root = tmp_path / "root"
    r1, r2 = release(tiny_bundle, tmp_path / "r1", 1), release(tiny_bundle, tmp_path / "r2", 2)
    assert invoke("install", r1, "--root", root).exit_code == 0
    kill_install_at(stage, r2, root, tmp_path)
    s = json.loads(invoke("status", "--root", root, "--json").output)
    assert s["active"]["slot"] == "a" and s["active"]["release"] == 1
    assert open_bundle(root).manifest["release"] == 1
    r = invoke("eval", root, "--data", FASHION, "--limit", "20", "--json")  # still runnable
    assert r.exit_code == 0 and json.loads(r.output)["n"] == 20
    r = invoke("install", r2, "--root", root, "--json")  # the next install sweeps the half copy and succeeds
    assert r.exit_code == 0 and json.loads(r.output.strip().splitlines()[-1])["slot"] == "b"
    assert [n for n in os.listdir(root / "slots") if n.startswith(".")] == []


# -- push over SSH ---------------------------------------------------------------------------------------------



@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd_bin):
        pytest.fail("sshd missing: .ci/run installs openssh-server")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        f"PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile {d}/sshd.pid\n"
        "Subsystem sftp internal-sftp\n")  # scp uses SFTP (OpenSSH >= 9)
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    p = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        p.kill()
        pytest.fail(f"sshd did not start: {p.stderr.read().decode()[-500:]}")
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    yield {"port": port, "key": d / "client_key", "known_hosts": d / "known_hosts", "user": getpass.getuser()}
    p.terminate()
    p.wait(10)


def test_push_installs_over_a_real_ssh_server(sshd, tiny_bundle, tmp_path):
    root = tmp_path / "vehicle"
    b = release(tiny_bundle, tmp_path / "b", 7)
    url = f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}{root}"
    remote = f"EDGECV_CACHE={tmp_path / 'remote-cache'} {sys.executable} -m edgecv"
    args = ["push", b, url, "-i", sshd["key"], "-o", f"UserKnownHostsFile={sshd['known_hosts']}",
            "-o", "StrictHostKeyChecking=yes", "--remote-edgecv", remote]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output.strip().splitlines()[-1])
    assert rep["status"] == "active" and rep["release"] == 7 and rep["slot"] == "a"
    assert open_bundle(root).manifest["release"] == 7
    assert [n for n in os.listdir(root) if n.startswith(".incoming")] == []
    r = invoke(*args)  # the same release again: refused on the device, reported here
    assert r.exit_code == 2 and "anti-rollback" in r.output
    bad = invoke("push", b, f"ssh://127.0.0.1:{free_port()}{root}", "-o", "ConnectTimeout=3")
    assert bad.exit_code == 2 and "cannot connect" in bad.output


def test_bad_keys_roots_and_urls_are_one_line(tiny_bundle, tmp_path, keys):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    huge_key = tmp_path / "huge.pem"
    with open(huge_key, "wb") as f:
        f.truncate(30 << 30)  # sparse; model-signing would read it whole
    ed_key = tmp_path / "ed25519.pem"
    ed_key.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    for args, needle in [(["sign", b, "--key", rsa_key], "an RSA private key; model-signing needs an ECDSA key"),
                         (["sign", b, "--key", ed_key], "an Ed25519 private key; model-signing needs an ECDSA"),
                         (["sign", b, "--key", tmp_path / "missing.pem"], "private key not found"),
                         (["sign", b, "--key", "/dev/zero"], "not a private key file (a device, pipe or socket)"),
                         (["sign", b, "--key", huge_key], "not a private key file (32,212,254,720 bytes, over"),
                         (["sign", b, "--key", tmp_path], "not a private key file (a folder)"),
                         (["install", b, "--root", keys / "dev.pem"], "exists and is not a directory"),
                         (["install", tmp_path / "nope", "--root", tmp_path / "r"], "not a bundle directory"),
                         (["status", "--root", tmp_path / "r"], "not an edgecv install root"),
                         (["rollback", "--root", tmp_path / "r"], "not an edgecv install root"),
                         (["push", b, "http://host/x"], "expected ssh://"),
                         (["push", b, "ssh://host"], "no install ROOT")]:
        r = invoke(*args)
        assert r.exit_code == 2 and needle in r.output, (args, r.output)
    assert not (b / "model.sig").exists() and not (tmp_path / "r").exists()
    root = tmp_path / "root"
    assert invoke("install", release(tiny_bundle, tmp_path / "r1", 1), "--root", root).exit_code == 0
    (root / "active").unlink()
    (root / "active").symlink_to("../../etc")  # hand-edited
    r = invoke("eval", root, "--data", FASHION, "--limit", "5")
    assert r.exit_code == 2 and "not to a slot" in r.output
