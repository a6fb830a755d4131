"""Property: the runtime resize gives finite, non-constant, in-range output for any shrink (1-60x), upscales,
odd and extreme frame sizes, in every mode. A fixed 240-sample kernel fit returned NaN taps from a ~18.5x
shrink on, and the Fashion-MNIST bundle then classified every 720p frame from all-black input."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecv.runtime.preprocess import RESIZE_MODES, Preprocessor, fitted_blur_kernel


def frame(h, w, c, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx * 255.0 / max(w - 1, 1) * 0.5 + yy * 255.0 / max(h - 1, 1) * 0.5)
    img = np.clip(base + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8)
    return img if c == 1 else np.stack([img, 255 - img, img // 2], -1)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resize=st.integers(4, 40), crop_frac=st.floats(0.5, 1.0), shrink=st.floats(0.05, 60.0),
       aspect=st.floats(0.2, 5.0), odd=st.integers(0, 1), channels=st.sampled_from([1, 3]),
       frame_channels=st.sampled_from([1, 3]), mode=st.sampled_from(RESIZE_MODES), seed=st.integers(0, 99))
def test_resize_output_is_finite_and_informative(resize, crop_frac, shrink, aspect, odd, channels, frame_channels,
                                                 mode, seed):
    crop = max(1, int(resize * crop_frac))
    short = max(1, int(round(resize * shrink)) | odd)
    h, w = (short, max(1, int(short * aspect) | odd)) if aspect >= 1 else (max(1, int(short / aspect) | odd), short)
    mean, std = [0.5] * channels, [0.25] * channels
    pre = Preprocessor({"input_size": crop, "resize": resize, "crop": crop, "channels": channels, "mean": mean,
                        "std": std}, mode)
    out = pre(frame(h, w, frame_channels, seed))
    assert out.shape == (channels, crop, crop)
    assert np.isfinite(out).all(), (h, w, mode)
    lo, hi = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    assert out.min() >= lo - 1e-4 and out.max() <= hi + 1e-4
    if crop >= 4 and min(h, w) >= 4:
        assert out.std() > 1e-3, (h, w, mode)  # a gradient plus noise never comes out as one flat value


@pytest.mark.parametrize("scale", [1.01, 1.45, 2, 7.5, 18.5, 19, 25, 38.6, 60, 120])
def test_fitted_kernel_is_finite_and_normalised(scale):
    k = fitted_blur_kernel(scale)
    assert np.isfinite(k).all() and k.sum() == pytest.approx(1, abs=1e-5) and np.allclose(k, k[::-1])


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_fashion_bundle_spec_on_hd_frames_is_not_black(mode):
    """The quickstart's 28x28 preprocessing on 720p and 1080p frames (a 25.7x and a 38.6x shrink)."""
    spec = {"input_size": 28, "resize": 28, "crop": 28, "channels": 1, "mean": [0.286], "std": [0.353]}
    pre = Preprocessor(spec, mode)
    for h, w in ((720, 1280), (1080, 1920)):
        img = frame(h, w, 3, 0)
        out = pre(img)
        assert np.isfinite(out).all() and out.std() > 0.1
        # the mean brightness survives the shrink (black frames had the minimum everywhere)
        gray = (0.299 * img[..., 2] + 0.587 * img[..., 1] + 0.114 * img[..., 0]) / 255
        centre = gray[:, (w - h) // 2:(w + h) // 2]
        assert abs(float(out.mean() * 0.353 + 0.286) - centre.mean()) < 0.03
