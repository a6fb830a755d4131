"""``edgecv push BUNDLE ssh://user@host[:port]/ROOT``: copy a bundle to a development vehicle over SSH with
the system's OpenSSH client (scp), run ``edgecv install`` there, and return its report.

The bundle goes to a temporary folder under ROOT on the device and is removed afterwards, installed or not.
Authentication is OpenSSH's own (keys, agent, ~/.ssh/config); host keys are checked as ssh checks them.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import uuid
from typing import Dict, List, Optional, Sequence
from urllib.parse import urlsplit

from edgecv.bundle.slots import UPLOAD_PREFIX
from edgecv.errors import DeviceError
from edgecv.utils import signals


class PushError(DeviceError):
    """The copy or the remote install failed (the device's previous version stays active)."""


def parse_target(url: str) -> Dict:
    u = urlsplit(url)
    if u.scheme != "ssh" or not u.hostname:
        raise PushError(f"{url}: expected ssh://[user@]host[:port]/ROOT")
    try:
        port = u.port
    except ValueError:
        raise PushError(f"{url}: bad port") from None
    root = u.path or ""
    if not root or root == "/":
        raise PushError(f"{url}: no install ROOT in the URL (ssh://host/var/lib/edgecv)")
    return {"user": u.username, "host": u.hostname, "port": port, "root": root}


def _ssh_base(t: Dict, options: Sequence[str], identity: Optional[str]) -> List[str]:
    args = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
    for o in options:
        args += ["-o", o]
    if identity:
        args += ["-i", identity]
    return args


def push(bundle: str, url: str, identity: Optional[str] = None, ssh_options: Sequence[str] = (),
         remote_edgecv: str = "edgecv", allow_downgrade: bool = False, timeout: float = 1800) -> Dict:
    """Copy ``bundle`` to the device at ``url`` and install it there; returns the device's install report."""
    from edgecv.bundle.reader import open_bundle

    b = open_bundle(bundle)  # never ship a damaged bundle
    t = parse_target(url)
    dest = f"{t['user']}@{t['host']}" if t["user"] else t["host"]
    base = _ssh_base(t, ssh_options, identity)
    ssh = ["ssh", *base] + (["-p", str(t["port"])] if t["port"] else []) + [dest]
    scp = ["scp", "-q", "-r", *base] + (["-P", str(t["port"])] if t["port"] else [])
    incoming = f"{t['root'].rstrip('/')}/{UPLOAD_PREFIX}{uuid.uuid4().hex[:12]}"

    def run(cmd, what):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=signals.child_unblock)
        except FileNotFoundError:
            raise PushError(f"{cmd[0]} not found: install the OpenSSH client") from None
        except subprocess.TimeoutExpired:
            raise PushError(f"{what}: timed out after {timeout:g} s") from None
        return r

    r = run(ssh + [f"mkdir -p {shlex.quote(incoming)}"], "connect")
    if r.returncode != 0:
        raise PushError(f"{url}: cannot connect or create {incoming}: {r.stderr.strip()[-300:]}")
    try:
        r = run(scp + [str(b.root) + "/.", f"{dest}:{incoming}/"], "copy")
        if r.returncode != 0:
            raise PushError(f"copy to {dest}:{incoming} failed: {r.stderr.strip()[-300:]}")
        cmd = f"{remote_edgecv} install {shlex.quote(incoming)} --root {shlex.quote(t['root'])} --json" + \
            (" --allow-downgrade" if allow_downgrade else "")
        r = run(ssh + [cmd], "remote install")
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        report = json.loads(lines[-1]) if lines else None
        if r.returncode != 0 or report is None:
            err = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise PushError(f"remote install on {t['host']} failed (exit {r.returncode}): {err}")
        return report
    finally:
        run(ssh + [f"rm -rf {shlex.quote(incoming)}"], "clean up")
