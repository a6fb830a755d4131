"""Image corruptions for robustness reports: ImageNet-C's families at severities 1-5, numpy and OpenCV only.

The corruption types and their severity constants follow Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations" (ICLR 2019; github.com/hendrycks/robustness, Apache-2.0).
This is an independent implementation: ``imagecorruptions`` 1.1.2 fails on current numpy and scikit-image
(glass_blur, gaussian_blur, fog), and ImageNet-C's motion blur needs ImageMagick (here: a line kernel at a random
angle; its length and sigma are ImageNet-C's). ``low_light`` is edgecv's own (vehicles at night: fewer photons,
so darker and noisier), not an ImageNet-C type.

The constants are for 224-pixel images; spatial ones (blur radii, fog scale, pixelation) scale with the image
size, so a 28-pixel Fashion-MNIST image is corrupted as much as a 224-pixel one, relatively. Each image gets its
own random stream from (seed, corruption, a checksum of its pixels), the same at every severity: reports are reproducible and
independent of order and batch size. Input and output: uint8 pixels [N, C, H, W], C = 1 or 3.
"""
from __future__ import annotations

import zlib
from typing import Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)


def _scale(h: int) -> float:
    return h / 224.0


# Each corruption: float image HxWxC in [0, 1], severity, rng -> float image in [0, 1].
def gaussian_noise(x, s, rng):
    c = [0.08, 0.12, 0.18, 0.26, 0.38][s - 1]
    return x + rng.normal(size=x.shape, scale=c)


def shot_noise(x, s, rng):
    c = [60, 25, 12, 5, 3][s - 1]
    return rng.poisson(np.clip(x, 0, 1) * c) / c


def impulse_noise(x, s, rng):
    c = [0.03, 0.06, 0.09, 0.17, 0.27][s - 1]
    out = x.copy()
    u = rng.random(x.shape[:2])
    out[u < c / 2] = 0.0  # salt and pepper on whole pixels
    out[(u >= c / 2) & (u < c)] = 1.0
    return out


def gaussian_blur(x, s, rng):
    c = [1, 2, 3, 4, 6][s - 1] * _scale(x.shape[0])
    return _blur(x, c)


def _blur(x, sigma):
    out = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigmaX=max(sigma, 1e-3), borderType=4)
    return out.reshape(x.shape)


def defocus_blur(x, s, rng):
    radius, alias = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][s - 1]
    radius, alias = radius * _scale(x.shape[0]), alias * _scale(x.shape[0])
    r = max(1, int(np.ceil(radius)))
    yy, xx = np.mgrid[-r: r + 1, -r: r + 1]
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    disk = _blur(disk[..., None], alias)[..., 0] if alias > 0.05 else disk
    disk /= disk.sum()
    out = cv2.filter2D(x.astype(np.float32), -1, disk, borderType=4)
    return out.reshape(x.shape)


def motion_blur(x, s, rng):
    radius, sigma = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][s - 1]
    length = max(2, int(round(sigma * 2 * _scale(x.shape[0]))))  # ImageMagick's -motion-blur extent
    k = np.zeros((2 * length + 1, 2 * length + 1), np.float32)
    k[length, length:] = np.exp(-np.arange(length + 1) ** 2 / (2 * (sigma * _scale(x.shape[0])) ** 2))
    angle = rng.uniform(-45, 45)
    m = cv2.getRotationMatrix2D((length, length), angle, 1.0)
    k = cv2.warpAffine(k, m, k.shape[::-1])
    k /= max(k.sum(), 1e-8)
    out = cv2.filter2D(x.astype(np.float32), -1, k, borderType=4)
    return out.reshape(x.shape)


def brightness(x, s, rng):
    c = [0.1, 0.2, 0.3, 0.4, 0.5][s - 1]
    if x.shape[2] != 3:
        return x + c
    hsv = cv2.cvtColor(np.clip(x, 0, 1).astype(np.float32), cv2.COLOR_RGB2HSV)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def contrast(x, s, rng):
    c = [0.4, 0.3, 0.2, 0.1, 0.05][s - 1]
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * c + means


def _plasma(size: int, decay: float, rng) -> np.ndarray:
    """A fractal cloud (diamond-square), size x size, values in [0, 1]."""
    n = 1
    while n < size:
        n *= 2
    grid = np.zeros((n, n), np.float64)
    step, amp = n, 100.0
    while step >= 2:
        half = step // 2
        # squares: the centre of each square is the corners' mean plus noise
        corners = grid[0:n:step, 0:n:step]
        mean = (corners + np.roll(corners, -1, 0) + np.roll(corners, -1, 1) + np.roll(np.roll(corners, -1, 0), -1, 1)) / 4
        grid[half:n:step, half:n:step] = mean + rng.uniform(-amp, amp, mean.shape)
        # diamonds: each edge midpoint is the mean of its four neighbours plus noise
        for oy, ox in ((0, half), (half, 0)):
            ys, xs = np.mgrid[oy:n:step, ox:n:step]
            nb = (grid[(ys - half) % n, xs] + grid[(ys + half) % n, xs] + grid[ys, (xs - half) % n]
                  + grid[ys, (xs + half) % n]) / 4
            grid[oy:n:step, ox:n:step] = nb + rng.uniform(-amp, amp, nb.shape)
        step, amp = half, amp / decay
    grid -= grid.min()
    return (grid / max(grid.max(), 1e-12))[:size, :size]


def fog(x, s, rng):
    c0, c1 = [(1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][s - 1]
    h, w = x.shape[:2]
    cloud = _plasma(max(h, w), c1, rng)[:h, :w, None]
    mx = x.max()
    return (x + c0 * cloud) * mx / (mx + c0)


def low_light(x, s, rng):
    gain, photons = [(0.6, 60), (0.45, 30), (0.3, 15), (0.2, 8), (0.12, 4)][s - 1]
    dark = np.clip(x, 0, 1) * gain
    return rng.poisson(dark * photons / gain) / (photons / gain)


def pixelate(x, s, rng):
    c = [0.6, 0.5, 0.4, 0.3, 0.25][s - 1]
    h, w = x.shape[:2]
    small = cv2.resize(x.astype(np.float32), (max(1, int(w * c)), max(1, int(h * c))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST).reshape(x.shape)


def jpeg_compression(x, s, rng):
    q = [25, 18, 15, 10, 7][s - 1]
    u8 = np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)
    bgr = u8[..., ::-1] if u8.shape[2] == 3 else u8
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, q])
    dec = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED if u8.shape[2] == 1 else cv2.IMREAD_COLOR)
    dec = dec[..., None] if dec.ndim == 2 else dec[..., ::-1]
    return dec.astype(np.float32) / 255


CORRUPTIONS: Dict[str, Tuple[str, Callable]] = {
    "gaussian_noise": ("noise", gaussian_noise),
    "shot_noise": ("noise", shot_noise),
    "impulse_noise": ("noise", impulse_noise),
    "defocus_blur": ("blur", defocus_blur),
    "motion_blur": ("blur", motion_blur),
    "gaussian_blur": ("blur", gaussian_blur),
    "fog": ("weather", fog),
    "brightness": ("weather", brightness),
    "low_light": ("weather", low_light),
    "contrast": ("digital", contrast),
    "pixelate": ("digital", pixelate),
    "jpeg_compression": ("digital", jpeg_compression),
}


def parse_names(text: str) -> List[str]:
    """``all``, family names (noise, blur, weather, digital) and corruption names, comma-separated."""
    out: List[str] = []
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        if tok == "all":
            out += list(CORRUPTIONS)
        elif tok in {f for f, _ in CORRUPTIONS.values()}:
            out += [n for n, (f, _) in CORRUPTIONS.items() if f == tok]
        elif tok in CORRUPTIONS:
            out.append(tok)
        else:
            families = sorted({f for f, _ in CORRUPTIONS.values()})
            raise ValueError(f"unknown corruption {tok!r} (expected all, a family ({', '.join(families)}) or one of "
                             f"{', '.join(CORRUPTIONS)})")
    return list(dict.fromkeys(out))


def corrupt(pixels: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """``pixels`` (uint8 [N, C, H, W]) with corruption ``name`` at ``severity`` (1-5), seeded per image."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity}: expected 1-5")
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 pixels [N, 1 or 3, H, W], got {pixels.dtype} {pixels.shape}")
    fn = CORRUPTIONS[name][1]
    tag = zlib.crc32(name.encode())
    out = np.empty_like(pixels)
    for i in range(len(pixels)):
        # the image's own bytes pick its random stream: the same image is corrupted the same way in any set,
        # order or batch; the same stream at every severity (common random numbers: severity curves are smooth)
        rng = np.random.default_rng([seed, tag, zlib.crc32(np.ascontiguousarray(pixels[i]).tobytes())])
        img = pixels[i].transpose(1, 2, 0).astype(np.float32) / 255
        res = np.asarray(fn(img, severity, rng), np.float64).reshape(img.shape)
        out[i] = np.clip(res * 255 + 0.5, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return out


def severities(text: str) -> Sequence[int]:
    """``1-5``, ``3`` or ``1,3,5`` -> the severities."""
    vals: List[int] = []
    for tok in (t.strip() for t in str(text).split(",")):
        if "-" in tok:
            a, b = tok.split("-", 1)
            vals += list(range(int(a), int(b) + 1))
        elif tok:
            vals.append(int(tok))
    bad = [v for v in vals if v not in SEVERITIES]
    if bad or not vals:
        raise ValueError(f"severities {text!r}: expected values in 1-5")
    return sorted(set(vals))
