"""Deploy commands: ``sign`` (workstation), ``install``, ``rollback``, ``status`` (device), ``push`` (both)."""
from __future__ import annotations

import json
import os
import sys

import click

from edgecv.cli.types import FiniteRange, options_from
from edgecv.utils.limits import MAX_TIMEOUT_S


def _trust(ctx, param, value):
    if value:
        from edgecv.bundle.trust import set_command_trust

        set_command_trust(value, add=True)
    return value


trust_option = click.option("--trust", multiple=True, callback=_trust, expose_value=False, metavar="KEY",
                            help="Trust this public key (PEM): the bundle must carry a valid signature by it.")


@click.command()
@click.argument("bundle")
@click.option("--key", required=True, help="EC private key (PEM), e.g. openssl ecparam -name prime256v1 -genkey.")
@click.option("--password", default=None, help="The key's password, if it has one.")
def sign(bundle, key, password):
    """Sign BUNDLE (OpenSSF model-signing format: ``model_signing verify key`` accepts it)."""
    from edgecv.deploy.signing import sign_bundle

    click.echo(f"signed: {sign_bundle(bundle, key, password)}")


@click.command()
@click.argument("bundle")
@click.option("--root", default=None, help="Install root [default: /var/lib/edgecv as root, else the user's data dir].")
@trust_option
@click.option("--allow-downgrade", is_flag=True, help="Install a release lower than or equal to the installed one.")
@click.option("--json", "as_json", is_flag=True, help="Print the install report as one JSON object.")
def install(bundle, root, allow_downgrade, as_json):
    """Install BUNDLE into the inactive slot, accept it with its golden vectors, then switch to it atomically.

    A failure or a kill at any point before the switch leaves the previous version active.
    """
    from edgecv.deploy.install import install as do_install

    rep = do_install(bundle, root, allow_downgrade, log=lambda s: click.echo(s, err=True))
    if as_json:
        click.echo(json.dumps(rep))
    else:
        from edgecv.utils.table import print_rows

        print_rows(rep["checks"], ["check", "ok", "detail"], f"edgecv install -> {rep['root']} (slot {rep['slot']})")
        c = rep["chosen"]
        click.echo(f"active: slot {rep['slot']}, release {rep['release']}, {c['target']} {c['precision']}; "
                   f"previous: {rep['previous'] or 'none'} ({rep['seconds']:.1f} s)")


@click.command()
@click.option("--root", default=None, help="Install root.")
def rollback(root):
    """Make the previous slot active again."""
    from edgecv.deploy.install import rollback as do_rollback

    r = do_rollback(root)
    click.echo(f"active: slot {r['active']} (release {r['release']}); previous: slot {r['previous']}")


@click.command()
@click.option("--root", default=None, help="Install root.")
@click.option("--json", "as_json", is_flag=True)
def status(root, as_json):
    """The active and previous slots with their install reports."""
    from edgecv.deploy.install import status as get_status

    s = get_status(root)
    if as_json:
        click.echo(json.dumps(s))
        return
    from edgecv.utils.table import print_rows

    rows = [{"": name, "slot": v["slot"], "release": v.get("release"), "status": v.get("status"),
             "bundle_id": (v.get("bundle_id") or "")[:16], "precision": (v.get("chosen") or {}).get("precision"),
             "bundle": v.get("bundle")} for name, v in (("active", s["active"]), ("previous", s["previous"])) if v]
    print_rows(rows, ["", "slot", "release", "status", "bundle_id", "precision", "bundle"], f"edgecv status {s['root']}")


@click.command()
@click.argument("bundle")
@click.argument("url")
@click.option("-i", "--identity", default=None, help="SSH private key file.")
@click.option("-o", "--ssh-option", "ssh_options", multiple=True, help="An ssh -o option (repeatable).")
@click.option("--remote-edgecv", default="edgecv", show_default=True, help="How to run edgecv on the device.")
@click.option("--allow-downgrade", is_flag=True)
def push(bundle, url, identity, ssh_options, remote_edgecv, allow_downgrade):
    """Copy BUNDLE to ssh://[user@]host[:port]/ROOT and run `edgecv install` there; prints the device's report."""
    from edgecv.deploy.push import push as do_push

    rep = do_push(bundle, url, identity, ssh_options, remote_edgecv, allow_downgrade)
    click.echo(json.dumps(rep))
    sys.exit(0)


@click.command("service-unit")
@click.option("--root", default=None, help="Install root the service runs [default: as for install].")
@click.option("--source", required=True, help="The camera, e.g. csi://0, /dev/video0, rtsp://...")
@click.option("--user", default="edgecv", show_default=True, help="Service account (in the 'video' group).")
@click.option("--watchdog", "watchdog_s", type=click.IntRange(1, 3600), default=10, show_default=True,
              help="WatchdogSec: restart when inference stops for this long.")
@click.option("-o", "--out", default=None, help="Write the unit here (e.g. /etc/systemd/system/edgecv.service).")
def service_unit(root, source, user, watchdog_s, out):
    """A systemd unit (Type=notify, WatchdogSec) that runs the install root's active bundle on SOURCE."""
    from edgecv.deploy.install import default_root
    from edgecv.deploy.systemd import unit_text, write_unit

    text = unit_text(os.path.abspath(root or default_root()), source, user, watchdog_s=watchdog_s)
    if out:
        write_unit(out, text)
        click.echo(f"wrote {out}; then: systemctl daemon-reload && systemctl enable --now {os.path.basename(out)}")
    else:
        click.echo(text, nl=False)


@click.command()
@click.argument("bundle")
@click.option("--repo", required=True, help="The TUF repository folder (static files: serve it as it is).")
@click.option("--channel", default="stable", show_default=True, help="The channel (a delegated targets role).")
@click.option("--keys", default=None, help="The repository's keys folder [default: REPO.keys beside it].")
@click.option("--init", "init_repo", is_flag=True, help="Create the repository and its keys first if it does not exist.")
@click.option("--json", "as_json", is_flag=True)
def publish(bundle, repo, channel, keys, init_repo, as_json):
    """Add the signed BUNDLE to a TUF repository that any static web server can serve (edgecv update pulls it)."""
    from pathlib import Path

    from edgecv.deploy.tuf_repo import RepoPaths
    from edgecv.deploy.tuf_repo import init_repo as do_init
    from edgecv.deploy.tuf_repo import publish as do_publish

    paths = RepoPaths.of(repo, keys)
    if init_repo and not (Path(paths.repo) / "metadata").exists():
        do_init(paths)
        click.echo(f"created {paths.repo} with keys in {paths.keys} (pin {paths.repo}/metadata/1.root.json on the "
                   "vehicles; keep root.pem offline)", err=True)
    rep = do_publish(bundle, repo, channel, keys)
    click.echo(json.dumps(rep) if as_json else
               f"published release {rep['release']} to {channel}: {rep['target']} ({rep['length']} bytes)")


@click.group()
def repo():
    """Manage a TUF repository: init, timestamp (re-sign; from a timer), rotate (a role's key)."""


@repo.command("init")
@click.argument("repo_dir")
@click.option("--keys", default=None, help="Where the keys go [default: REPO.keys beside it].")
def repo_init(repo_dir, keys):
    """Create a TUF repository with one key per role (root, targets, snapshot, timestamp, stable, canary)."""
    from edgecv.deploy.tuf_repo import RepoPaths, init_repo

    paths = RepoPaths.of(repo_dir, keys)
    init_repo(paths)
    click.echo(f"created {paths.repo}; keys in {paths.keys}. Pin {paths.repo}/metadata/1.root.json on the "
               "vehicles (edgecv update --trusted-root), then keep root.pem offline.")


@repo.command("timestamp")
@click.argument("repo_dir")
@click.option("--keys", default=None)
@click.option("--days", type=FiniteRange(min=0.001, max=30), default=None, help="Validity [default: 1 day].")
def repo_timestamp(repo_dir, keys, days):
    """Re-sign the timestamp: run it at least daily, or vehicles refuse the repository as frozen."""
    from edgecv.deploy.tuf_repo import timestamp

    click.echo(f"timestamp version {timestamp(repo_dir, keys, days)}")


@repo.command("rotate")
@click.argument("repo_dir")
@click.argument("role")
@click.option("--keys", default=None)
def repo_rotate(repo_dir, role, keys):
    """Replace ROLE's key (root, targets, snapshot, timestamp or a channel); the old key is revoked."""
    from edgecv.deploy.tuf_repo import rotate_key

    r = rotate_key(repo_dir, role, keys)
    click.echo(f"{r['role']}: key {r['revoked'][:12]} revoked, {r['new'][:12]} trusted")


@click.command()
@click.option("--repo-url", required=True, help="Where the repository is served, e.g. https://updates.example/fleet.")
@click.option("--root", default=None, help="Install root [default: as for install].")
@click.option("--channel", default="stable", show_default=True)
@click.option("--trusted-root", default=None, help="The repository's root.json to pin on the first update.")
@click.option("--timeout", "timeout_s", type=FiniteRange(1, MAX_TIMEOUT_S), default=30.0, show_default=True)
@trust_option
@click.option("--timer", "timer_dir", default=None, metavar="DIR",
              help="Instead: write edgecv-update.service and .timer into DIR (e.g. /etc/systemd/system).")
@click.option("--every", "every_min", type=click.IntRange(1, 10080), default=60, show_default=True,
              help="With --timer: minutes between updates.")
@click.option("--retry-refused", is_flag=True,
              help="Try a release this device refused in the last day again now (else it is not downloaded again "
                   "for a day).")
@click.option("--json", "as_json", is_flag=True)
def update(root, timer_dir, every_min, as_json, **opts):
    """Pull the newest compatible release of CHANNEL from a TUF repository and install it (safe from a timer).

    Exit status: 0 installed or up to date, 2 refused (named: an attack, an incompatible or failed install),
    3 the repository could not be reached (nothing changed).
    """
    from edgecv.deploy.install import default_root
    from edgecv.deploy.update import UpdateOffline, UpdateOptions, check_repo_url
    from edgecv.deploy.update import update as do_update

    root = os.path.abspath(root or default_root())
    check_repo_url(opts["repo_url"])
    if timer_dir:
        _write_timer(timer_dir, root, opts["repo_url"], opts["channel"], every_min)
        return
    try:
        rep = do_update(root, UpdateOptions(**options_from(UpdateOptions, opts)),
                        log=lambda s: click.echo(s, err=True))
    except UpdateOffline as e:
        click.echo(f"error: {e}; nothing changed", err=True)
        sys.exit(3)
    click.echo(json.dumps(rep) if as_json else rep["status"] + (f": release {rep['release']} active in slot "
                                                                 f"{rep['slot']}" if rep["status"] == "installed" else ""))


def _write_timer(timer_dir, root, repo_url, channel, every_min) -> None:
    from edgecv.deploy.systemd import update_units, write_unit

    for name, text in update_units(root, repo_url, channel, every_min).items():
        write_unit(os.path.join(timer_dir, name), text, flag="--timer")
    click.echo(f"wrote edgecv-update.service and .timer into {timer_dir}; then: systemctl daemon-reload && "
               "systemctl enable --now edgecv-update.timer")
