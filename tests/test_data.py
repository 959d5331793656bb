"""Datasets (vaecli.data): IDX files and the registry, the shipped mini subset, train/test splits,
image folders and decoding, errors that name what is missing; --binarize's fixed binarisation of the
test split."""

import struct

import pytest
import torch
from PIL import Image

from vaecli.config import DataConfig
from vaecli.data import IDX_FILES, binarize_fixed, list_images, load_data, load_image, read_idx, split_indices
from vaecli.errors import DataError


def _idx(arr: torch.Tensor) -> bytes:
    dims = tuple(arr.shape)
    return struct.pack(">HBB", 0, 8, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + arr.numpy().tobytes()


def _fake_mnist(root, cls="FashionMNIST", n_train=6, n_test=4):
    raw = root / cls / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)))


def test_read_idx_and_errors():
    a = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    assert torch.equal(read_idx(_idx(a)), a)
    with pytest.raises(DataError):
        read_idx(_idx(a)[:-1])
    with pytest.raises(DataError):
        read_idx(b"\x89PNG....")


def test_fake_idx_files_load(tmp_path):
    _fake_mnist(tmp_path)
    train, test, cfg = load_data(DataConfig(name="fashion-mnist", root=str(tmp_path)), download=False)
    assert train.images.shape == (6, 1, 28, 28) and test.images.shape == (4, 1, 28, 28)
    assert train.images.dtype == torch.uint8
    assert cfg.fingerprint and cfg.train_size == 6 and cfg.channels == 1


def test_missing_dataset_names_the_four_files(tmp_path):
    with pytest.raises(DataError) as e:
        load_data(DataConfig(name="mnist", root=str(tmp_path)), download=False)
    msg = str(e.value)
    assert all(f in msg for f in IDX_FILES) and str(tmp_path) in msg and "\n" not in msg


def test_download_failure_is_a_data_error(tmp_path, monkeypatch):
    from torchvision import datasets

    def no_net(self):
        raise OSError("network unreachable")

    monkeypatch.setattr(datasets.FashionMNIST, "download", no_net)
    with pytest.raises(DataError, match="download failed"):
        load_data(DataConfig(name="fashion-mnist", root=str(tmp_path)))


def test_embedded_mini_subset():
    train, test, cfg = load_data(DataConfig(name="fashion-mnist-mini"))
    assert len(train) == 2000 and len(test) == 500
    assert train.images.shape[1:] == (1, 28, 28)
    assert int(train.images.max()) > 200  # real images, not blank
    assert sorted(set(train.labels.tolist())) == list(range(10))


def _write_images(folder, n=10):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = folder / ("a b" if i % 2 else "ü")
        sub.mkdir(exist_ok=True)
        Image.new("L", (40, 30), color=i * 20).save(sub / f"img {i}.png")
    (folder / "notes.txt").write_text("not an image")


def test_image_folder_split_is_deterministic(tmp_path):
    _write_images(tmp_path / "imgs")
    cfg = DataConfig(name=str(tmp_path / "imgs"), image_size=16, split_seed=3)
    tr1, te1, c1 = load_data(cfg)
    tr2, te2, _ = load_data(cfg)
    assert len(tr1) == 9 and len(te1) == 1 and tr1.paths == tr2.paths and te1.paths == te2.paths
    assert tr1.images.shape == (9, 1, 16, 16) and c1.channels == 1
    tr3, te3, _ = load_data(DataConfig(name=str(tmp_path / "imgs"), image_size=16, split_seed=4))
    assert set(tr3.paths) | set(te3.paths) == set(tr1.paths) | set(te1.paths)
    assert not set(tr1.paths) & set(te1.paths)


def test_split_indices_partition():
    tr, te = split_indices(100, seed=1)
    assert len(te) == 10 and len(tr) == 90
    assert sorted(torch.cat([tr, te]).tolist()) == list(range(100))
    with pytest.raises(DataError):
        split_indices(1, 0)


def test_color_detection_and_modes(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(d / "red.png")
    Image.new("RGBA", (8, 8), (0, 255, 0, 128)).save(d / "alpha.png")
    Image.new("P", (8, 8), 3).save(d / "pal.png")
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(d / "cmyk.jpg")
    Image.new("I;16", (8, 8), 65535).save(d / "deep.png")
    _, _, cfg = load_data(DataConfig(name=str(d), image_size=8))
    assert cfg.channels == 3
    assert load_image(d / "deep.png", 1, 8).max() == 255
    assert load_image(d / "red.png", 3, 8)[:, 0, 0].tolist() == [255, 0, 0]
    assert load_image(d / "cmyk.jpg", None, 4).shape == (3, 4, 4)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00", b"hello world"])
def test_bad_image_files(tmp_path, content):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(DataError) as e:
        load_image(p, 1, 28)
    assert "\n" not in str(e.value)


def test_folder_errors_and_symlink_loop(tmp_path):
    with pytest.raises(DataError, match="neither a dataset"):
        load_data(DataConfig(name=str(tmp_path / "missing")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        load_data(DataConfig(name=str(empty)))
    loop = tmp_path / "loop"
    loop.mkdir()
    Image.new("L", (8, 8)).save(loop / "a.png")
    (loop / "self").symlink_to(loop, target_is_directory=True)
    assert len(list_images(loop)) == 1


# ----------------------------------------------------------------------------- binarisation


def test_fixed_binarisation_is_binary_deterministic_and_unbiased():
    _, test, _ = load_data(DataConfig(name="fashion-mnist-mini"))
    a, b = binarize_fixed(test), binarize_fixed(test)
    assert a.images.dtype == torch.uint8 and a.images.shape == test.images.shape
    assert set(a.images.unique().tolist()) <= {0, 255}
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, binarize_fixed(test, seed=1).images)
    # E[binary pixel] = pixel: the means agree to within sampling error (392k pixels)
    assert abs(a.images.float().mean() / 255 - test.images.float().mean() / 255) < 0.005
    # pixels at 0 stay 0 and pixels at 255 stay 255; binary images are unchanged
    assert (a.images[test.images == 0] == 0).all() and (a.images[test.images == 255] == 255).all()
    assert torch.equal(binarize_fixed(a, seed=5).images, a.images)


def test_load_data_binarises_only_the_test_split():
    train, test, cfg = load_data(DataConfig(name="fashion-mnist-mini", binarize=True))
    plain_train, plain_test, plain_cfg = load_data(DataConfig(name="fashion-mnist-mini"))
    assert set(test.images.unique().tolist()) == {0, 255}
    assert torch.equal(train.images, plain_train.images)
    assert cfg.binarize and cfg.fingerprint != plain_cfg.fingerprint
