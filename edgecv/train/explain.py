"""``edgecv explain``: Grad-CAM family heatmaps (pytorch-grad-cam) with a deletion faithfulness check."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from edgecv.data.loaders import UnreadableImage, load_upright
from edgecv.data.transforms import eval_transform
from edgecv.errors import DatasetError
from edgecv.train.sources import load_source
from edgecv.utils.images import IMAGE_EXTS, image_files, write_png
from edgecv.utils.io import relative_hint
from edgecv.utils.outputs import output_folder

DELETE_FRACTION = 0.20
RANDOM_DRAWS = 10
# Below this change of the class score from either deletion, the check has nothing to compare: on an image
# without detail (one colour) both deletions leave it as it was, and which is lower is rounding noise.
UNDECIDED_DROP = 1e-4


def _methods():
    import pytorch_grad_cam as g

    return {"gradcam": g.GradCAM, "gradcam++": g.GradCAMPlusPlus, "xgradcam": g.XGradCAM,
            "eigencam": g.EigenCAM, "layercam": g.LayerCAM, "hirescam": g.HiResCAM}


def default_target_layer(model: nn.Module, input_size: int, channels: int) -> nn.Module:
    """The deepest module with a 4-D output of at least 2x2 that runs once per forward pass.

    Modules called more than once (EfficientNet-Lite's top-level ``_swish`` serves both the stem and the
    head) would hand CAM the activations of one call and the gradients of another.
    """
    calls: Dict[int, int] = {}
    found: List[nn.Module] = []

    def hook(mod, i, o):
        calls[id(mod)] = calls.get(id(mod), 0) + 1
        if torch.is_tensor(o) and o.ndim == 4 and o.shape[-1] >= 2:
            found.append(mod)

    hooks = [m.register_forward_hook(hook) for m in model.modules() if len(list(m.children())) == 0]
    with torch.no_grad():
        model(torch.zeros(1, channels, input_size, input_size))
    for h in hooks:
        h.remove()
    once = [m for m in found if calls[id(m)] == 1]
    if not once:
        raise ValueError(f"{type(model).__name__}: no convolutional feature map found for CAM")
    return once[-1]


def _expand(images: List[str]) -> List[str]:
    """The image files IMAGES name: files as given, folders by every image below them (in sub-folders too, as a
    camera replay reads them: a folder is photographs here, not a labelled tree whose loose files are left out)."""
    out = []
    for p in images:
        if Path(p).is_dir():
            found = image_files(p)
            if not found:
                raise DatasetError(f"{p}: no image files in this folder or below it "
                                   f"({', '.join(sorted(IMAGE_EXTS))})")
            out += found
        elif Path(p).is_file():
            out.append(p)
        elif os.path.lexists(p):  # a device, a FIFO, a socket, a dangling link: nothing to decode, or no end
            raise DatasetError(f"{p}: not an image file or folder (a device, pipe, socket or broken link)")
        else:
            raise DatasetError(f"{p}: no such image file or folder{relative_hint(p)}")
    return out


def _unique_png(out: Path, stem: str, method: str, used: set) -> Path:
    """``<stem>_<method>.png``; images with the same name from different folders get ``_2``, ``_3``, ...
    (one heatmap must never overwrite another of the same run)."""
    base = f"{stem}_{method.replace('+', 'p')}"
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return out / f"{name}.png"


def random_cam(grid: Tuple[int, int], size: Tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random saliency map on the CAM's own grid, upsampled as pytorch-grad-cam upsamples CAMs."""
    import cv2

    return cv2.resize(rng.random(grid).astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def deletion_check(model: nn.Module, x: torch.Tensor, cam: np.ndarray, cls: int, seed: int = 0,
                   grid: Optional[Tuple[int, int]] = None, **options) -> Dict[str, float]:
    """Softmax score drop for ``cls`` when the top ``fraction`` CAM pixels are deleted, against the mean
    drop over ``draws`` random deletions of the same number of pixels. Deleting means replacing with the
    ``baseline`` image.

    Random deletions: with ``grid`` (the CAM's native resolution, e.g. 7x7 for a stride-32 layer at 224),
    each draw is the top ``fraction`` of a random map on that grid upsampled like the CAM, so both sides
    delete equally many pixels in blobs of the same size and the comparison isolates *where* the CAM
    points. Without ``grid``, random single pixels are deleted (scattered deletions perturb a CNN in a
    different way from one blob, so that control mixes shape with location).

    ``blur`` (default): a heavily blurred copy (Gaussian, sigma = 1/10 of the image side), which removes the
    detail a classifier reads while keeping colours and low frequencies. ``mean``: 0 after normalisation.
    ``options``: ``fraction`` (DELETE_FRACTION), ``baseline`` (``blur``), ``draws`` (RANDOM_DRAWS).
    """
    unknown = set(options) - {"fraction", "baseline", "draws"}
    if unknown:
        raise TypeError(f"deletion_check: unknown option(s) {', '.join(sorted(unknown))}")
    fraction, baseline = options.get("fraction", DELETE_FRACTION), options.get("baseline", "blur")
    draws = options.get("draws", RANDOM_DRAWS)
    h, w = cam.shape
    if baseline == "blur":
        import cv2

        sigma = max(h, w) / 10
        base = torch.from_numpy(np.stack([cv2.GaussianBlur(c, (0, 0), sigma) for c in x.numpy()]))
    else:
        base = torch.zeros_like(x)
    k = int(round(fraction * h * w))
    rng = np.random.default_rng(seed)

    def top_mask(score: np.ndarray) -> torch.Tensor:
        m = torch.zeros(h * w, dtype=torch.bool)
        m[torch.from_numpy(np.argsort(score.ravel(), kind="stable")[::-1][:k].copy())] = True
        return m.view(1, h, w)

    masks = [top_mask(cam)]
    for _ in range(draws):
        if grid:
            masks.append(top_mask(random_cam(grid, (h, w), rng)))
        else:
            masks.append(torch.from_numpy(rng.permutation(h * w) < k).view(1, h, w))
    batch = torch.stack([x] + [torch.where(m, base, x) for m in masks])
    with torch.no_grad():
        p = torch.softmax(model(batch), 1)[:, cls]
    rnd = p[2:].mean()
    row = {"score": p[0].item(), "score_top_deleted": p[1].item(), "score_random_deleted": rnd.item(),
           "drop_top": (p[0] - p[1]).item(), "drop_random": (p[0] - rnd).item()}
    why = undecided(cam, row["drop_top"], row["drop_random"])
    return {**row, "deletion_ok": None if why else bool(p[1] < rnd), **({"undecided": why} if why else {})}


def undecided(cam: np.ndarray, drop_top: float, drop_random: float) -> Optional[str]:
    """Why the deletion check cannot judge this CAM (None: it can): a flat CAM ranks no pixel above another (its
    "top 20%" would be whichever pixels sort last), and deletions that do not move the score compare noise."""
    if float(np.ptp(cam)) <= 1e-6 * max(1.0, float(np.abs(cam).max())):
        return "the CAM is flat: it ranks no pixel above another"
    if max(abs(drop_top), abs(drop_random)) < UNDECIDED_DROP:
        return f"neither deletion moves the score by {UNDECIDED_DROP:g} (an image without detail)"
    return None


def deletion_summary(res: Dict) -> str:
    """The deletion check's one line for ``explain_images``' result: the pass rate over the images it could
    judge, and how many it could not."""
    judged, left = res["deletion_judged"], res["deletion_undecided"]
    rate = f"holds on {res['deletion_pass_rate']:.1%} of {judged} images" if judged else "judged no image"
    return f"deletion check {rate}" + (f" ({left} undecided: a flat CAM, or no detail to delete)" if left else "")


def feature_grid(model: nn.Module, layer: nn.Module, input_size: int, channels: int) -> Tuple[int, int]:
    """Spatial size of ``layer``'s output for one input (the resolution Grad-CAM works at)."""
    shape: List[Tuple[int, int]] = []
    h = layer.register_forward_hook(lambda m, i, o: shape.append(tuple(o.shape[-2:])))
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, input_size, input_size))
    finally:
        h.remove()
    return shape[0]


def _save_overlay(rgb: np.ndarray, cam: np.ndarray, labels: List[str], path: Path) -> None:
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    vis = show_cam_on_image(rgb.astype(np.float32), cam, use_rgb=True)
    scale = max(1, 256 // vis.shape[0])
    vis = cv2.resize(vis, (vis.shape[1] * scale, vis.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    bar = np.full((18 * len(labels) + 6, vis.shape[1], 3), 255, np.uint8)
    for i, text in enumerate(labels):
        cv2.putText(bar, text, (4, 16 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    out = np.concatenate([vis, bar])
    write_png(path, cv2.cvtColor(out, cv2.COLOR_RGB2BGR))


@dataclass
class ExplainOptions:
    """``edgecv explain``'s options: the CAM method, the top-k labels shown, the deletion check (``check``) and what
    its random deletions are made of (``random_unit``: ``cam`` blobs at the CAM's resolution, ``pixel`` single
    pixels; see :func:`deletion_check`), at most ``limit`` images, and the target ``layer`` (default: the last
    convolution with a spatial map)."""

    method: str = "gradcam"
    topk: int = 3
    check: bool = False
    limit: Optional[int] = None
    layer: Optional[nn.Module] = None
    random_unit: str = "cam"


def explain_images(target: str, images: List[str], out_dir: str, options: Optional[ExplainOptions] = None,
                   **fields) -> Dict:
    """Write one PNG per image (heatmap over the centre crop, top-k labels below); optionally run the check.
    Options come as an :class:`ExplainOptions`, or as its fields by name."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    o = replace(options or ExplainOptions(), **fields)
    if o.random_unit not in ("cam", "pixel"):
        raise ValueError(f"random_unit must be 'cam' or 'pixel', not {o.random_unit!r}")
    src = load_source(target)
    model, cfg = src.model.eval(), src.data
    for p in model.parameters():
        p.requires_grad_(True)
    layer = o.layer or default_target_layer(model, cfg.input_size, cfg.channels)
    grid = feature_grid(model, layer, cfg.input_size, cfg.channels) if o.random_unit == "cam" else None
    paths = _expand(images)[:o.limit] if o.limit else _expand(images)  # a bad path is refused before -o is made
    made = not os.path.lexists(out_dir)
    out = output_folder(out_dir)
    rows, used = [], set()
    with _methods()[o.method](model=model, target_layers=[layer]) as cam:
        for path in paths:
            try:
                x = eval_transform(cfg)(load_upright(path, cfg.channels))
            except UnreadableImage as e:
                rows.append({"image": path, "error": str(e)})
                continue
            row, heat, cls = _explain_one(model, cam, x, src, o, _unique_png(out, Path(path).stem, o.method, used),
                                          ClassifierOutputTarget)
            row = {"image": path, **row}
            if o.check:
                row.update(deletion_check(model, x, heat, cls, seed=len(rows), grid=grid))
            rows.append(row)
    try:
        return _explained(rows, o, layer, grid)
    except DatasetError:
        if made:  # no image could be read: leave no empty folder behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _explain_one(model, cam, x, src, o: ExplainOptions, png: Path, target_cls):
    """One image's CAM overlay PNG: ``(row, heatmap, class)``."""
    cfg = src.data
    with torch.no_grad():
        probs = torch.softmax(model(x[None]), 1)[0]
    top = probs.topk(min(o.topk, probs.numel()))
    cls = int(top.indices[0])
    heat = cam(input_tensor=x[None], targets=[target_cls(cls)])[0]
    mean, std = torch.tensor(cfg.mean).view(-1, 1, 1), torch.tensor(cfg.std).view(-1, 1, 1)
    rgb = (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, 2)
    names = [f"{src.classes[i] if i < len(src.classes) else i}: {p:.3f}"
             for p, i in zip(top.values.tolist(), top.indices.tolist())]
    _save_overlay(rgb, heat, names, png)
    return ({"label": src.classes[cls] if cls < len(src.classes) else str(cls), "index": cls,
             "score": float(top.values[0]), "png": str(png)}, heat, cls)


def _explained(rows: List[Dict], o: ExplainOptions, layer, grid) -> Dict:
    failed = [r for r in rows if "error" in r]
    if rows and len(failed) == len(rows):
        raise DatasetError(f"no image could be explained ({len(failed)} unreadable: {failed[0]['error']})")
    ok = [r for r in rows if r.get("deletion_ok") is not None]
    return {"method": o.method, "layer": type(layer).__name__, "random_unit": o.random_unit,
            "cam_grid": list(grid) if grid else None, "images": [r for r in rows if "error" not in r],
            "skipped": failed,
            "deletion_pass_rate": (sum(r["deletion_ok"] for r in ok) / len(ok)) if ok else None,
            "deletion_judged": len(ok), "deletion_undecided": sum(1 for r in rows if "undecided" in r)}
