"""Deploy commands tried as a hostile or careless user would (issue 26): trust that fails closed, an install that
touches no folder before its checks pass, an install state that cannot lie, and a systemd unit nothing can be
injected into. Each test fails on the edgecv before these rules."""
import json
import os
import shutil
import stat
import subprocess

import pytest
from conftest import invoke, kill_install_at, release, resign, unanswerable_golden

from edgecv.bundle.reader import open_bundle


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("EDGECV_TRUST", raising=False)


def status(root):
    r = invoke("status", "--root", root, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


# -- 1. trust fails closed ----------------------------------------------------------------------------------------

def _trust_source(kind, tmp_path, keys):
    d = tmp_path / f"trust-{kind}"
    d.mkdir()
    if kind == "empty folder":
        pass
    elif kind == "keys with another suffix":
        shutil.copy(keys / "dev.pub", d / "dev.key")
        shutil.copy(keys / "dev.pub", d / "dev.pub.txt")
    elif kind == "only broken links":
        (d / "fleet.pub").symlink_to(tmp_path / "gone.pub")
    elif kind == "a .pem that is no public key":
        (d / "fleet.pem").write_text("not a key\n")
    elif kind == "a private key as the key":
        shutil.copy(keys / "dev.pem", d / "dev.pem")
    elif kind == "a key that is a folder":
        (d / "fleet.pub").mkdir()
    elif kind == "a key that is a device":
        (d / "fleet.pub").symlink_to("/dev/zero")
    elif kind == "a 30 GB key":  # sparse; read whole, it took all memory
        with open(d / "fleet.pub", "wb") as f:
            f.truncate(30 << 30)
    elif kind == "a broken link as the source":
        os.rmdir(d)
        d.symlink_to(tmp_path / "nowhere")
    return d


TRUST_CASES = ["empty folder", "keys with another suffix", "only broken links", "a .pem that is no public key",
               "a private key as the key", "a key that is a folder", "a key that is a device", "a 30 GB key",
               "a broken link as the source"]


@pytest.mark.parametrize("how", ["EDGECV_TRUST", "--trust", "trusted-keys folder"])
@pytest.mark.parametrize("kind", TRUST_CASES)
def test_configured_trust_that_yields_no_key_refuses(kind, how, tiny_bundle, tmp_path, keys, monkeypatch):
    unsigned = release(tiny_bundle, tmp_path / "u", 1)
    src = _trust_source(kind, tmp_path, keys)
    args = ["install", unsigned, "--root", tmp_path / "root"]
    if how == "EDGECV_TRUST":
        monkeypatch.setenv("EDGECV_TRUST", str(src))
    elif how == "--trust":
        args += ["--trust", src]
    else:
        folder = tmp_path / "config" / "edgecv" / "trusted-keys"
        folder.parent.mkdir(parents=True)
        os.rename(src, folder) if not src.is_symlink() else folder.symlink_to(os.readlink(src))
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert "error:" in r.output and ("trust" in r.output or "key" in r.output), r.output
    assert not (tmp_path / "root").exists()


def test_trust_folder_with_one_good_key_still_checks_signatures(tiny_bundle, tmp_path, keys, monkeypatch):
    d = tmp_path / "trust"
    d.mkdir()
    shutil.copy(keys / "dev.pub", d / "dev.pub")
    (d / "README").write_text("fleet keys\n")  # other files beside a usable key are left alone
    monkeypatch.setenv("EDGECV_TRUST", str(d))
    other = release(tiny_bundle, tmp_path / "o", 1)
    assert invoke("sign", other, "--key", keys / "other.pem").exit_code == 0
    r = invoke("install", other, "--root", tmp_path / "root")
    assert r.exit_code == 2 and "does not verify with any trusted key" in r.output
    good = release(tiny_bundle, tmp_path / "g", 2)
    invoke("sign", good, "--key", keys / "dev.pem")
    r = invoke("install", good, "--root", tmp_path / "root", "--json")
    assert r.exit_code == 0, r.output
    sig = next(c for c in json.loads(r.output.splitlines()[-1])["checks"] if c["check"] == "signature")
    assert "dev.pub" in sig["detail"]


# -- 2. install touches nothing before its checks -----------------------------------------------------------------

def test_an_install_root_inside_the_bundle_is_refused(tiny_bundle, tmp_path, keys):
    """It made the slots inside the bundle's folder, and the signed bundle then failed its own signature."""
    b = release(tiny_bundle, tmp_path / "r1", 1)
    assert invoke("sign", b, "--key", keys / "dev.pem").exit_code == 0
    (tmp_path / "link").symlink_to(b)
    for root in (b / "vehicle", tmp_path / "link" / "vehicle", b):
        r = invoke("install", b, "--root", root)
        assert r.exit_code == 2 and "the install root is inside the bundle" in r.output, r.output
    assert not (b / "vehicle").exists()
    r = invoke("install", b, "--root", tmp_path / "root", "--trust", keys / "dev.pub")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("mode", [0o1777, 0o700])
def test_install_never_changes_a_folder_that_is_not_an_install_root(mode, tiny_bundle, tmp_path):
    x = tmp_path / "x"
    x.mkdir()
    (x / "userfile").write_text("mine")
    os.chmod(x, mode)
    before = sorted(os.listdir(x))
    for bundle, needle in [(tmp_path / "MISSING", "not a bundle directory"),
                           (release(tiny_bundle, tmp_path / "r1", 1), "not an edgecv install root")]:
        r = invoke("install", bundle, "--root", x)
        assert r.exit_code == 2 and needle in r.output, r.output
        assert stat.S_IMODE(os.stat(x).st_mode) == mode and sorted(os.listdir(x)) == before


def test_an_empty_existing_root_keeps_its_mode(tiny_bundle, tmp_path):
    x = tmp_path / "empty"
    x.mkdir(mode=0o700)
    os.chmod(x, 0o700)
    assert invoke("install", release(tiny_bundle, tmp_path / "r1", 1), "--root", x).exit_code == 0
    assert stat.S_IMODE(os.stat(x).st_mode) == 0o700 and status(x)["active"]["release"] == 1


# -- 3. the install state machine ------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage,active,previous", [
    ("switch", ("a", 1), None),   # before the switch began: r2 was never active, so it is nobody's previous
    ("link", ("a", 1), None),     # r2 staged into slot b, the link not moved: slot b no longer holds a previous
    ("record", ("b", 2), ("a", 1)),  # the link moved, the state not yet written: the link is the truth
])
def test_previous_means_previously_active_after_a_kill(stage, active, previous, tiny_bundle, tmp_path):
    root = tmp_path / "root"
    r1, r2 = release(tiny_bundle, tmp_path / "r1", 1), release(tiny_bundle, tmp_path / "r2", 2)
    assert invoke("install", r1, "--root", root).exit_code == 0
    kill_install_at(stage, r2, root, tmp_path)
    s = status(root)
    assert (s["active"]["slot"], s["active"]["release"]) == active
    assert (s["previous"] and (s["previous"]["slot"], s["previous"]["release"])) == previous
    r = invoke("rollback", "--root", root)
    if previous is None:
        assert r.exit_code == 2 and ("no previous version" in r.output or "no longer holds" in r.output), r.output
        assert open_bundle(root).manifest["release"] == 1
    else:
        assert r.exit_code == 0 and open_bundle(root).manifest["release"] == 1
    assert status(root)["highest_release"] == (2 if stage == "record" else 1)


def test_a_failed_acceptance_keeps_the_previous_version_to_roll_back_to(tiny_bundle, tmp_path):
    root = tmp_path / "root"
    for n in (1, 2):
        assert invoke("install", release(tiny_bundle, tmp_path / f"r{n}", n), "--root", root).exit_code == 0
    bad = release(tiny_bundle, tmp_path / "r3", 3)
    unanswerable_golden(bad)
    r = invoke("install", bad, "--root", root)
    assert r.exit_code == 2 and "acceptance test failed" in r.output
    nogolden = release(tiny_bundle, tmp_path / "r4", 4)
    resign(nogolden, lambda m: m.pop("golden"))
    r = invoke("install", nogolden, "--root", root)
    assert r.exit_code == 2 and "no golden vectors" in r.output
    s = status(root)
    assert (s["active"]["release"], s["previous"]["release"]) == (2, 1)
    assert invoke("rollback", "--root", root).exit_code == 0 and open_bundle(root).manifest["release"] == 1


def test_a_copy_that_fails_midway_is_removed_and_the_active_slot_kept(tiny_bundle, tmp_path):
    """A real write limit (RLIMIT_FSIZE, SIGXFSZ ignored) fails the copy into the inactive slot partway, as a full
    disk would: one line, exit 2, the partial copy removed (on a vehicle it would keep the disk full), the active
    release unchanged."""
    import resource
    import signal
    import sys

    root = tmp_path / "root"
    assert invoke("install", release(tiny_bundle, tmp_path / "r1", 1), "--root", root).exit_code == 0
    biggest = max(f.stat().st_size for f in (tmp_path / "r1").iterdir())

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (biggest // 2, biggest // 2))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    r = subprocess.run([sys.executable, "-m", "edgecv", "install", str(release(tiny_bundle, tmp_path / "r2", 2)),
                        "--root", str(root)], capture_output=True, text=True, timeout=120, preexec_fn=small_files)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert f"{root}: cannot copy the bundle into slot b (File too large); the copy was removed and the active slot " \
        "is untouched" in r.stderr
    assert sorted(os.listdir(root / "slots")) == ["a", "a.json"] and status(root)["active"]["release"] == 1


def test_an_upload_a_killed_push_left_is_swept_by_the_next_install(tiny_bundle, tmp_path, monkeypatch):
    """`push` copies into ROOT/.incoming-<random> and removes it after the install, but not when the connection
    drops or the push is killed: each such upload (a whole bundle) stayed on the vehicle's disk for good. The next
    install removes those unchanged for a day, and keeps one a push may still be copying into."""
    import time

    from edgecv.bundle.slots import STALE_UPLOAD_S

    root = tmp_path / "root"
    assert invoke("install", release(tiny_bundle, tmp_path / "r1", 1), "--root", root).exit_code == 0
    old, fresh = root / ".incoming-0123456789ab", root / ".incoming-ba9876543210"
    for d in (old, fresh):
        shutil.copytree(tmp_path / "r1", d)
    then = time.time() - STALE_UPLOAD_S - 60
    for f in [old, *old.rglob("*")]:
        os.utime(f, (then, then), follow_symlinks=False)
    os.utime(fresh / "manifest.json", (then, then))  # one old file, but the copy is still going on beside it
    r = invoke("install", release(tiny_bundle, tmp_path / "r2", 2), "--root", root, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["stale_uploads_removed"] == [old.name]
    assert not old.exists() and fresh.is_dir() and status(root)["active"]["release"] == 2
    # the upload being installed is never swept, however old its files
    for f in [fresh, *fresh.rglob("*")]:
        os.utime(f, (then, then), follow_symlinks=False)
    res = invoke("install", fresh, "--root", root, "--allow-downgrade", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["stale_uploads_removed"] == [] and fresh.is_dir()
    from edgecv.deploy import install as inst

    real = inst._newest_change

    def vanished(folder):  # the upload removed between the listing and the look (its push cleaning up)
        shutil.rmtree(folder)
        return real(folder)

    monkeypatch.setattr(inst, "_newest_change", vanished)
    assert inst.sweep_stale_uploads(root, keep=tmp_path / "elsewhere") == [] and not fresh.exists()


def test_a_root_without_room_for_the_bundle_is_refused_before_copying_simulated(tiny_bundle, tmp_path,
                                                                                 monkeypatch):
    """The free space is simulated (a small file system needs a mount): the size check refuses before a byte is
    copied, naming what the bundle needs and what is free."""
    import collections

    root = tmp_path / "root"
    assert invoke("install", release(tiny_bundle, tmp_path / "r1", 1), "--root", root).exit_code == 0
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(2**20, 2**20 - 1000, 1000))
    r = invoke("install", release(tiny_bundle, tmp_path / "r2", 2), "--root", root)
    assert r.exit_code == 2 and "slot b needs" in r.output and "MiB free; nothing was copied" in r.output
    assert sorted(os.listdir(root / "slots")) == ["a", "a.json"] and status(root)["active"]["release"] == 1


@pytest.mark.parametrize("damage", ["install.json is a folder", "install.json is garbage", "install.json is empty",
                                    "highest_release is a string", "active link points elsewhere than the state"])
def test_damaged_state_refuses_installs_and_keeps_the_active_slot(damage, tiny_bundle, tmp_path):
    root = tmp_path / "root"
    for n in (3, 4):
        assert invoke("install", release(tiny_bundle, tmp_path / f"r{n}", n), "--root", root).exit_code == 0
    state = root / "install.json"
    if damage == "install.json is a folder":
        state.unlink()
        state.mkdir()
    elif damage == "install.json is garbage":
        state.write_bytes(b"\x00garbage{")
    elif damage == "install.json is empty":
        state.write_text("")
    elif damage == "highest_release is a string":
        state.write_text(json.dumps({**json.loads(state.read_text()), "highest_release": "4"}))
    else:
        (root / "active").unlink()
        (root / "active").symlink_to("slots/a")
    for args in (["install", release(tiny_bundle, tmp_path / "r1", 1), "--root", root],
                 ["install", release(tiny_bundle, tmp_path / "r5", 5), "--root", root],
                 ["rollback", "--root", root]):
        r = invoke(*args)
        assert r.exit_code == 2 and "install.json" in r.output, (args, r.output)
    expected = "a" if damage.startswith("active link") else "b"
    assert os.readlink(root / "active") == f"slots/{expected}"
    assert open_bundle(root).manifest["release"] == (3 if expected == "a" else 4)


def test_a_garbage_slot_report_does_not_reset_the_anti_rollback_floor(tiny_bundle, tmp_path):
    root = tmp_path / "root"
    assert invoke("install", release(tiny_bundle, tmp_path / "r4", 4), "--root", root).exit_code == 0
    (root / "slots" / "a.json").write_text("garbage")
    r = invoke("install", release(tiny_bundle, tmp_path / "r1", 1), "--root", root)
    assert r.exit_code == 2 and "not newer than the installed 4" in r.output


@pytest.mark.parametrize("budget", [{"min_agreement": float("nan")}, {"min_agreement": -1}, {"min_agreement": 1.5},
                                    {"max_drop": float("inf")}, {"max_drop": -1}, {"min_agreement": "0.99"}])
def test_budgets_out_of_range_are_refused(budget, tiny_bundle, tmp_path):
    b = release(tiny_bundle, tmp_path / "b", 1)
    resign(b, lambda m: m["golden"]["budget"].update(budget))
    for cmd in (["verify", b], ["install", b, "--root", tmp_path / "root"]):
        r = invoke(*cmd)
        assert r.exit_code == 2 and "manifest.json" in r.output, r.output
        assert "golden.budget" in r.output or "is not a number a bundle may hold" in r.output, r.output
    assert not (tmp_path / "root").exists()


def test_paths_that_look_like_markup_print_as_they_are(tiny_bundle, tmp_path):
    root = tmp_path / "p[/x]" / "[bold]root[/bold]"
    r = invoke("install", release(tiny_bundle, tmp_path / "b[/red]", 1), "--root", root)
    assert r.exit_code == 0 and "[bold]root[/bold]" in r.output, r.output
    r = invoke("status", "--root", root)
    assert r.exit_code == 0 and "b[/red]" in r.output.replace("\n", "").replace("│", "").replace(" ", "")


# -- 4. service-unit -------------------------------------------------------------------------------------------------

def _unit(tmp_path, *args):
    out = tmp_path / "edgecv.service"
    r = invoke("service-unit", "-o", out, *args)
    return r, (out.read_text() if out.exists() else None)


@pytest.mark.parametrize("opt,value", [("--user", "edgecv\nExecStartPost=/bin/true"), ("--user", ""),
                                       ("--user", "a b"), ("--source", "csi://0\nExecStartPost=/bin/true"),
                                       ("--root", "/var/lib/edgecv\rExecStartPost=/bin/true"),
                                       ("--source", "rtsp://h/x\x1b[2J")])
def test_service_unit_refuses_what_would_inject_a_directive(opt, value, tmp_path):
    args = {"--source": "csi://0", "--root": "/var/lib/edgecv", opt: value}
    r, text = _unit(tmp_path, *[x for kv in args.items() for x in kv])
    assert r.exit_code == 2 and "error:" in r.output and text is None, r.output


def test_service_unit_escapes_for_systemd_and_systemd_accepts_it(tmp_path):
    source, root = 'rtsp://cam:p%40ss$HOME"q\\@10.0.0.2/live', str(tmp_path / "r o%t")
    r, text = _unit(tmp_path, "--source", source, "--root", root)
    assert r.exit_code == 0, r.output
    lines = [ln.split("=", 1)[0] for ln in text.splitlines() if "=" in ln]
    assert len(lines) == len(set(lines)), "a directive appears twice"
    assert "p%40ss" not in text.split("ExecStart=")[0]  # the description shows no password
    v = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "edgecv.service")], capture_output=True,
                       text=True)
    assert v.returncode == 0, v.stderr


def test_systemd_reads_an_escaped_argument_back_as_written(tmp_path):
    """systemd itself unescapes the argument: its complaint about the (non-existent) executable quotes the path
    as it read it. ``$`` stays ``$$`` there: variables are expanded when the command runs."""
    from edgecv.deploy.systemd import exec_arg

    tricky = "/nonexistent/p%40ss\"q\\ 'x' é"
    unit = tmp_path / "t.service"
    unit.write_text(f"[Service]\nExecStart={exec_arg(tricky, 'x')} {exec_arg('a b', 'y')}\n")
    v = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert tricky in v.stderr, v.stderr
