"""Deploy commands: ``sign`` (workstation), ``install``, ``rollback``, ``status`` (device), ``push`` (both)."""
from __future__ import annotations

import json
import os
import sys

import click


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
