"""Commands whose TARGET is checked before torch is imported (5-10 s of imports): a typo or the wrong kind of
path is refused at once, in one line that says what TARGET may be."""
import subprocess
import sys

CODE = ("import sys, click\nfrom edgecv.cli import cli\n"
        "try:\n    cli.main(sys.argv[1:], standalone_mode=False)\n"
        "except click.BadParameter as e:\n    print(e.format_message())\n"
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n")


def _cli(*args) -> str:
    """The command's refusal (or nothing) and, last, whether torch was imported, from a fresh interpreter."""
    return subprocess.run([sys.executable, "-c", CODE, *map(str, args)], capture_output=True, text=True,
                          check=True).stdout


def test_a_bundle_or_missing_target_is_refused_by_explain(tmp_path):
    """explain needs the PyTorch model; a deploy bundle (a folder) or a typo is refused, and a bundle that
    carries its pruned checkpoint is pointed at it."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    outs = [_cli("explain", target, "img.png") for target in (bundle, tmp_path / "nope.pt")]
    (bundle / "pruned_model.pt").write_bytes(b"x")
    outs.append(_cli("explain", bundle, "img.png"))
    assert "a folder, not a recipe or checkpoint file; give the recipe or the training run's model.pt" in outs[0]
    assert "nope.pt: no such file (expected a recipe .yaml or a checkpoint .pt)" in outs[1]
    assert f"its PyTorch model is {bundle / 'pruned_model.pt'}" in outs[2]
    assert all(o.rstrip().endswith("torch not imported") for o in outs), outs


def test_a_missing_target_is_refused_by_eval_naming_bundles_too(tmp_path):
    """eval takes a recipe, a checkpoint or a bundle folder; the model loaders' message knows only the first two."""
    target = tmp_path / "out" / "bundel"
    out = _cli("eval", target, "--data", "x")
    assert f"{target}: no such file or folder" in out and "or a deploy bundle folder" in out
    assert out.rstrip().endswith("torch not imported"), out
