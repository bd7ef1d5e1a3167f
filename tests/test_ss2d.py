"""Cross-scan / cross-merge index bookkeeping and the token rearrangements."""
import torch

from das2f.models.fusion import tokens_to_subpixels
from das2f.models.ss2d import cross_merge, cross_scan, tokens_to_image


def test_cross_scan_orders():
    h, w = 3, 4
    x = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)  # value = row-major index
    xs = cross_scan(x)
    assert xs.shape == (1, 4, 1, h * w)
    rows = list(range(h * w))
    cols = [r * w + c for c in range(w) for r in range(h)]  # column-major walk
    assert xs[0, 0, 0].tolist() == rows
    assert xs[0, 1, 0].tolist() == cols
    assert xs[0, 2, 0].tolist() == rows[::-1]
    assert xs[0, 3, 0].tolist() == cols[::-1]


def test_merge_of_scan_is_four_times_identity_and_adjoint():
    x = torch.randn(2, 3, 5, 7)
    torch.testing.assert_close(cross_merge(cross_scan(x), 5, 7), 4 * x.flatten(2))
    # merge is the adjoint of scan: <scan(x), y> == <x, merge(y)>
    y = torch.randn(2, 4, 3, 35)
    lhs = (cross_scan(x) * y).sum()
    rhs = (x.flatten(2) * cross_merge(y, 5, 7)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_tokens_to_image_places_subpixels():
    # token (i, j) with vector v: channel c, sub-pixel (a, b) is v[c*16 + a*4 + b] at pixel (4i+a, 4j+b)
    x = torch.randn(2, 3, 5, 64)
    img = tokens_to_image(x, 4)
    assert img.shape == (2, 4, 12, 20)
    for (i, j, c, a, b) in [(0, 0, 0, 0, 0), (2, 4, 3, 3, 1), (1, 2, 2, 0, 3)]:
        assert img[1, c, 4 * i + a, 4 * j + b] == x[1, i, j, c * 16 + a * 4 + b]


def test_tokens_to_subpixels_layout():
    x = torch.randn(1, 16, 16, 64)
    f = tokens_to_subpixels(x)
    assert f.shape == (1, 1024, 16)
    # pixel (2h+a, 2w+b) of the 32x32 grid holds channel c = x[h, w, c*4 + a*2 + b]
    for (h, w, a, b, c) in [(0, 0, 0, 0, 0), (5, 9, 1, 0, 7), (15, 15, 1, 1, 15)]:
        assert f[0, (2 * h + a) * 32 + 2 * w + b, c] == x[0, h, w, c * 4 + a * 2 + b]
