"""The procedural shapes dataset (vaecli.data.shapes): factors, determinism, caching, registry."""

import pytest
import torch

from vaecli.config import DataConfig
from vaecli.data import load_data, shapes
from vaecli.errors import DataError

SMALL = (3, 2, 3, 3, 3)  # a small grid keeps rendering fast in tests


@pytest.fixture
def small_grid(monkeypatch):
    monkeypatch.setattr(shapes, "FACTOR_SIZES", SMALL)


def _centroid(img):
    w = img[0].float()
    ys, xs = torch.meshgrid(torch.arange(w.shape[0]).float(), torch.arange(w.shape[1]).float(), indexing="ij")
    return float((w * xs).sum() / w.sum()), float((w * ys).sum() / w.sum())


def test_full_grid_is_every_combination_once():
    g = shapes.factor_grid()
    assert g.shape == (3 * 6 * 10 * 16 * 16, 5)
    assert len({tuple(r) for r in g[::97].tolist()}) == g[::97].shape[0]
    for k, n in enumerate(shapes.FACTOR_SIZES):
        assert g[:, k].min() == 0 and g[:, k].max() == n - 1
    vals = shapes.factor_values()
    assert vals["rotation"][-1] < 90 and vals["scale"][0] == pytest.approx(0.5)


def test_factors_change_the_pixels_as_they_should():
    f = torch.tensor(
        [[0, 5, 0, 8, 8], [0, 5, 0, 15, 8], [0, 5, 0, 8, 15], [0, 0, 0, 8, 8], [1, 5, 0, 8, 8], [2, 5, 0, 8, 8], [0, 5, 5, 8, 8]]
    )
    for size in (32, 64):
        im = shapes.render(f, size)
        assert im.dtype == torch.uint8 and im.shape == (7, 1, size, size)
        assert torch.equal(im, shapes.render(f, size))  # deterministic
        cx, cy = _centroid(im[0])
        assert _centroid(im[1])[0] > cx + size * 0.2 and abs(_centroid(im[1])[1] - cy) < 0.5  # x moves right
        assert _centroid(im[2])[1] > cy + size * 0.2 and abs(_centroid(im[2])[0] - cx) < 0.5  # y moves down
        area = im.float().sum(dim=(1, 2, 3)) / 255
        assert area[3] < 0.4 * area[0]  # scale 0.5 -> a quarter of the area (+ anti-aliasing)
        assert len({round(float(a)) for a in area[[0, 4, 5]]}) == 3  # three different shapes
        assert not torch.equal(im[0], im[6])  # rotated
        assert abs(float(area[6]) - float(area[0])) < 0.05 * float(area[0])  # rotation keeps the area
        assert im[:, :, 0, :].max() == 0 and im[:, :, :, -1].max() == 0  # never cut at the border
    with pytest.raises(DataError):
        shapes.render(f, 48)


def test_cache_is_written_reused_and_rebuilt_when_damaged(small_grid, tmp_path, monkeypatch):
    a = shapes.load_shapes(tmp_path, 32)
    img_path, lab_path = shapes.cache_paths(tmp_path, 32)
    assert img_path.is_file() and lab_path.is_file()
    assert a.images.shape == (162, 1, 32, 32) and torch.equal(a.labels, shapes.factor_grid())
    assert img_path.read_bytes()[:4] == b"\x00\x00\x08\x04"  # IDX, not a pickle
    calls = []
    real = shapes.render
    monkeypatch.setattr(shapes, "render", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    b = shapes.load_shapes(tmp_path, 32)
    assert calls == [] and torch.equal(a.images, b.images)
    img_path.write_bytes(img_path.read_bytes()[:100])  # truncated
    c = shapes.load_shapes(tmp_path, 32)
    assert calls == [1] and torch.equal(a.images, c.images)
    with pytest.raises(DataError):
        shapes.load_shapes(tmp_path, 28)


def test_registered_in_load_data_with_a_split(small_grid):
    train, test, cfg = load_data(DataConfig(name="shapes"))
    assert len(train) + len(test) == 162 and len(test) == 16
    assert cfg.image_size == 32 and cfg.channels == 1 and cfg.fingerprint
    assert train.labels.shape == (146, 5) and test.labels.shape == (16, 5)
    train64, _, cfg64 = load_data(DataConfig(name="shapes", image_size=64))
    assert train64.images.shape[-1] == 64 and cfg64.image_size == 64
    _, test2, _ = load_data(DataConfig(name="shapes", split_seed=1))
    assert not torch.equal(test.labels, test2.labels)
