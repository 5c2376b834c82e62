"""ImageFolder sources (directory or .tar/.tar.gz, read without extracting), their cache and their errors."""

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from baffle.config import Config, ConfigError
from baffle.data import imagefolder
from baffle.data.fixtures import write_imagefolder_fixture
from baffle.data.imagefolder import ImageFolderError
from baffle.data.registry import DatasetNotFoundError, clear_cache, dataset_info, load_dataset

pytest.importorskip("PIL")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BAFFLE_CACHE", str(tmp_path / "cache"))
    clear_cache()
    yield
    clear_cache()


def _pixels(ds, root) -> np.ndarray:
    """Undo the normalization: the uint8 pixels load_dataset started from."""
    info = dataset_info(ds.name, root)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return torch.round((ds.x * std + mean) * 255).to(torch.uint8).numpy()


def test_archive_and_directory_load_the_same_labelled_images(tmp_path):
    archive = write_imagefolder_fixture(tmp_path / "pets.tar.gz")
    folder = write_imagefolder_fixture(tmp_path / "pets")
    a = load_dataset("imagefolder", root=archive)
    b = load_dataset("imagefolder", root=folder)
    assert a.x.shape == (12, 3, 8, 8) and a.classes == ("cat", "dog", "frog") and a.num_classes == 3
    assert a.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # sorted class folders, whatever the archive order
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    test = load_dataset("imagefolder", split="test", root=archive)
    assert test.y.tolist() == [0, 0, 1, 1, 2, 2]
    assert a.x.mean().abs() < 0.2 and (a.x.std() - 1).abs() < 0.2  # normalized with the data's own statistics
    # exact pixels: the PNGs' bytes decoded again by hand
    with tarfile.open(archive) as tf:
        png = tf.extractfile("data/train/dog/0001.png").read()
    from PIL import Image

    expected = np.asarray(Image.open(io.BytesIO(png))).transpose(2, 0, 1)
    assert np.array_equal(_pixels(a, archive)[5], expected)


def test_decoded_once_then_read_from_the_cache_and_a_changed_source_is_reread(tmp_path, monkeypatch):
    archive = write_imagefolder_fixture(tmp_path / "pets.tar")
    first = load_dataset("imagefolder", root=archive)
    cached = list((tmp_path / "cache").glob("imagefolder-*.npz"))
    assert len(cached) == 1
    clear_cache()

    def no_decoding(path):
        raise AssertionError("decoded again although the source is cached")

    monkeypatch.setattr(imagefolder, "read_imagefolder", no_decoding)
    assert torch.equal(load_dataset("imagefolder", root=archive).x, first.x)
    monkeypatch.undo()
    monkeypatch.setenv("BAFFLE_CACHE", str(tmp_path / "cache"))
    clear_cache()
    write_imagefolder_fixture(archive, seed=1)  # same name, other images
    changed = load_dataset("imagefolder", root=archive)
    assert not torch.equal(changed.x, first.x)
    assert list((tmp_path / "cache").glob("imagefolder-*.npz")) != cached  # the old contents' cache is gone
    assert len(list((tmp_path / "cache").glob("imagefolder-*.npz"))) == 1


def test_grayscale_without_a_top_folder(tmp_path):
    folder = write_imagefolder_fixture(tmp_path / "digits", classes=("a", "b"), channels=1, top="", size=6)
    ds = load_dataset("imagefolder", root=folder, image_size=12)
    assert ds.x.shape == (8, 1, 12, 12)
    assert dataset_info("imagefolder", folder).channels == 1


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg
    return msg


def test_missing_source_says_what_was_expected(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("imagefolder", root=tmp_path / "nowhere.tar.gz")
    assert "nowhere.tar.gz does not exist" in _one_line(e.value) and "<class>" in _one_line(e.value)
    with pytest.raises(DatasetNotFoundError, match="no data.root"):
        load_dataset("cifar10_jpeg")


@pytest.mark.parametrize("problem", ["corrupt", "no_test", "bad_image", "sizes", "depths", "plain_file"])
def test_malformed_sources_give_one_line_naming_the_file(tmp_path, problem):
    path = tmp_path / "bad.tar.gz"
    if problem == "corrupt":
        path.write_bytes(b"\x1f\x8b" + os.urandom(200))
        expect = "not a readable .tar/.tar.gz archive"
    elif problem == "plain_file":
        path = tmp_path / "images.zip"
        path.write_bytes(b"PK")
        expect = "not a directory or a .tar/.tar.gz archive"
    else:
        folder = write_imagefolder_fixture(tmp_path / "src", classes=("x", "y"))
        if problem == "no_test":
            for f in (folder / "data" / "test").rglob("*.png"):
                f.unlink()
            expect = "no images for split test"
        elif problem == "bad_image":
            (folder / "data" / "train" / "x" / "0000.png").write_bytes(b"not a png")
            expect = "data/train/x/0000.png is not a readable image"
        elif problem == "sizes":
            write_imagefolder_fixture(tmp_path / "big", classes=("y",), size=9)
            os.replace(tmp_path / "big" / "data" / "train" / "y" / "0003.png", folder / "data" / "train" / "y" / "0003.png")
            expect = "all images must share one size"
        else:
            (folder / "other" / "train" / "x").mkdir(parents=True)
            os.replace(folder / "data" / "train" / "x" / "0000.png", folder / "other" / "train" / "x" / "0000.png")
            expect = "under one folder"
        with tarfile.open(path, "w:gz") as tf:
            tf.add(folder, arcname=".")
    with pytest.raises(ImageFolderError) as e:
        load_dataset("imagefolder", root=path)
    msg = _one_line(e.value)
    assert msg.startswith(str(path)) and expect in msg


def test_cifar10_jpeg_refuses_data_that_is_not_cifar10(tmp_path):
    archive = write_imagefolder_fixture(tmp_path / "pets.tar.gz")
    with pytest.raises(ImageFolderError, match="expected CIFAR-10's airplane, automobile"):
        load_dataset("cifar10_jpeg", root=archive)


def test_config_needs_a_root_for_folder_datasets():
    for name in ("imagefolder", "cifar10_jpeg"):
        cfg = Config()
        cfg.apply_overrides([f"data.name={name}"])
        with pytest.raises(ConfigError, match="needs data.root"):
            cfg.validate()


def test_a_federation_trains_on_an_imagefolder_archive(tmp_path):
    from baffle.sim.loop import Simulation

    archive = write_imagefolder_fixture(tmp_path / "pets.tar.gz", n_train=8)
    cfg = Config()
    cfg.apply_overrides([f"data.root={archive}", "data.name=imagefolder", "data.image_size=0", "data.num_clients=2",
                         "data.eval_train_samples=8", "model.name=mlp", "estimator.K=4", "estimator.engine=loop",
                         "federation.batch_size=4", "run.rounds=2", "run.eval_every=1", "run.threads=1"])
    sim = Simulation(cfg.validate(), None, progress=False)
    before = [p.clone() for p in sim.fed.strategy.model.parameters()]
    sim.run()
    assert sim.fed.train.classes == ("cat", "dog", "frog") and sim.fed.test.x.shape == (6, 3, 8, 8)
    assert any(not torch.equal(a, b) for a, b in zip(before, sim.fed.strategy.model.parameters()))
