"""Your own data: `data=image_folder data.root=<dir>` and `data=csv data.path=<file>`, trained, evaluated,
predicted and fine-tuned like MNIST; bad files get one line naming the file and the place."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_config, run_script, synthetic_digits
from mlplab.checkpoint_reader import load_trained
from mlplab.data.csv_data import CSVDataModule
from mlplab.data.image_folder import ImageFolderDataModule
from mlplab.data.pictures import prepare_picture
from mlplab.errors import ConfigError, DataError
from mlplab.evaluation import evaluate
from mlplab.finetune import finetune
from mlplab.pipeline import train
from mlplab.prediction import predict

TINY = ["debug=fast", "trainer.max_epochs=2", "data.batch_size=16"]
CLASSES = ("circle", "cross", "bar")


def draw(kind: str, seed: int, side: int = 40) -> Image.Image:
    """A dark shape on light, slightly noisy paper, at a random place and size: what a user's scans look like."""
    rng = np.random.default_rng(seed)
    paper = Image.fromarray(rng.integers(200, 256, (side, side)).astype(np.uint8))
    from PIL import ImageDraw

    pen = ImageDraw.Draw(paper)
    x, y, r = rng.integers(10, 18), rng.integers(10, 18), rng.integers(7, 11)
    if kind == "circle":
        pen.ellipse((x - r, y - r, x + r, y + r), outline=20, width=3)
    elif kind == "cross":
        pen.line((x - r, y - r, x + r, y + r), fill=20, width=3)
        pen.line((x - r, y + r, x + r, y - r), fill=20, width=3)
    else:
        pen.rectangle((x - 2, y - r, x + 2, y + r), fill=20)
    return paper


def make_folder(root: Path, per_class: int = 12, classes=CLASSES, seed: int = 0) -> Path:
    for c, kind in enumerate(classes):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(kind, seed + 1000 * c + i).save(root / kind / f"{i}.png")
    return root


def write_kaggle(path: Path, n: int, seed: int, labelled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    images, labels = synthetic_digits(n, seed)
    header = (["label"] if labelled else []) + [f"pixel{i}" for i in range(784)]
    rows = images.reshape(n, -1).astype(int)
    if labelled:
        rows = np.concatenate([labels[:, None].astype(int), rows], 1)
    np.savetxt(path, rows, fmt="%d", delimiter=",", header=",".join(header), comments="")
    return images, labels


def write_table(path: Path, n: int = 240, seed: int = 0) -> None:
    """Three classes of 4 numeric features, separable by feature 0 and 2 (on very different scales)."""
    rng = np.random.default_rng(seed)
    species = np.arange(n) % 3
    features = rng.normal(size=(n, 4)) * [1, 1, 100, 1] + np.stack([species * 3, 0 * species, species * 300, species * 0], 1)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["length", "width", "weight", "noise", "species"])
        for row, label in zip(features.round(4), species, strict=True):
            writer.writerow([*row, label + 1])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("pictures"))


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kaggle")
    write_kaggle(root / "train.csv", 300, seed=1)
    write_kaggle(root / "test.csv", 20, seed=2, labelled=False)
    return root


def image_folder(root: Path, cache: Path, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(root=str(root), cache_dir=str(cache), **({"val_size": 6, "batch_size": 8} | kwargs))


# --- image folders -----------------------------------------------------------------------------------------

def test_folder_classes_are_the_folder_names_and_pictures_are_prepared_like_predict(folder, tmp_path):
    dm = image_folder(folder, tmp_path)
    dm.setup("fit")
    assert dm.class_names == ("bar", "circle", "cross") and dm.input_shape == (1, 28, 28) and dm.num_classes == 3
    assert len(dm.train_set[1]) + len(dm.val_set[1]) + len(dm.test_set[1]) == 36
    assert torch.bincount(dm.test_set[1]).tolist() == [2, 2, 2] + [] and len(dm.val_set[1]) == 6  # stratified 20 %
    # every training picture is predict.py's preparation of one of the files
    prepared = {tuple((prepare_picture(p) * 255).round().flatten().tolist()) for p in sorted(folder.rglob("*.png"))}
    pixels = (dm.train_set[0] * dm.std + dm.mean) * 255
    assert all(tuple(row.round().tolist()) in prepared for row in pixels.flatten(1)[:5])


def test_decoding_is_cached_by_content_and_an_edited_folder_rebuilds(tmp_path, caplog):
    root = make_folder(tmp_path / "pics", per_class=4)
    cache = tmp_path / "cache"
    first = image_folder(root, cache, val_size=2).data
    assert len(list(cache.glob("*.pt"))) == 1
    with caplog.at_level("INFO", logger="mlplab.data.image_folder"):
        second = image_folder(root, cache, val_size=2).data
    assert "read from the cache" in caplog.text and torch.equal(first.values, second.values)
    draw("cross", 99).save(root / "circle" / "0.png")  # a picture replaced: same name, other content
    caplog.clear()
    with caplog.at_level("INFO", logger="mlplab.data.image_folder"):
        third = image_folder(root, cache, val_size=2).data
    assert "decoded" in caplog.text and len(list(cache.glob("*.pt"))) == 2
    assert not torch.equal(first.values, third.values)


def test_train_and_test_subfolders_are_the_splits(tmp_path):
    make_folder(tmp_path / "split" / "train", per_class=8)
    make_folder(tmp_path / "split" / "test", per_class=3, seed=500)
    dm = image_folder(tmp_path / "split", tmp_path / "cache")
    dm.setup("fit")
    assert len(dm.test_set[1]) == 9 and len(dm.train_set[1]) + len(dm.val_set[1]) == 24


def test_image_folder_trains_and_the_checkpoint_carries_the_class_names(folder, tmp_path):
    cfg = compose_config("train", [*TINY, "data=image_folder", f"data.root={folder}", f"data.cache_dir={tmp_path / 'c'}",
                         "data.val_size=6", "trainer.max_epochs=6", "data.batch_size=8"], tmp_path / "run")
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.5  # three clearly different shapes: far above chance (1/3)
    trained = load_trained(metrics["best_ckpt"])
    assert trained.class_names == ("bar", "circle", "cross") and trained.info.box == 20
    predict(compose_config("predict", [f"ckpt_path={metrics['best_ckpt']}", f"inputs={folder / 'cross'}"], tmp_path / "predicted"))
    with open(tmp_path / "predicted" / "predictions.csv") as file:
        predicted = [row["class_1"] for row in csv.DictReader(file)]
    assert set(predicted) <= set(CLASSES) and predicted.count("cross") > len(predicted) / 2


# --- CSV files ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kaggle_run(kaggle, tmp_path_factory) -> dict:
    """`python train.py data=csv data.path=train.csv` finished: its metrics.json."""
    run_dir = tmp_path_factory.mktemp("kaggle_run")
    train(compose_config("train", [*TINY, "data=csv", f"data.path={kaggle / 'train.csv'}", "data.val_size=50",
                         "model.hidden_dims=[64]", "trainer.max_epochs=5"], run_dir))
    return json.loads((run_dir / "metrics.json").read_text())


def test_kaggle_round_trip_train_csv_to_a_submission(kaggle, kaggle_run, tmp_path):
    """train.csv -> train.py -> predict.py on test.csv -> submission.csv (ImageId,Label), as Kaggle wants it."""
    assert kaggle_run["test/acc"] > 0.4  # held-out 20 % of train.csv; chance is 0.1
    result = run_script("predict.py", f"ckpt_path={kaggle_run['best_ckpt']}", f"inputs={kaggle / 'test.csv'}",
                        f"hydra.run.dir={tmp_path / 'predicted'}", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "predicted" / "submission.csv") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["ImageId", "Label"] and [int(r[0]) for r in rows[1:]] == list(range(1, 21))
    assert {r[1] for r in rows[1:]} <= {str(d) for d in range(10)}
    _, labels = synthetic_digits(20, 2)
    assert np.mean([int(r[1]) for r in rows[1:]] == labels) > 0.4


def test_a_kaggle_model_fine_tunes_on_a_picture_folder(kaggle_run, folder, tmp_path):
    finetune(compose_config("finetune", [
        *TINY, f"pretrained={kaggle_run['best_ckpt']}", "data=image_folder", f"data.root={folder}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.val_size=6", "data.samples_per_class=4", "trainer.max_epochs=3"],
        tmp_path / "run"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["head_reset"] is True  # 10 digits -> 3 shapes: a new head
    assert metrics["test/acc"] > metrics["pretrained_test_acc"] and metrics["test/acc"] > 0.5  # it learned them; chance 1/3
    assert load_trained(metrics["best_ckpt"]).class_names == ("bar", "circle", "cross")


def test_kaggle_rows_are_images_and_take_classes_samples_per_class_and_folds(kaggle):
    dm = CSVDataModule(path=str(kaggle / "train.csv"), val_size=30, classes=[0, 1, 2], samples_per_class=5)
    dm.setup("fit")
    assert dm.is_image and dm.input_shape == (1, 28, 28) and dm.class_names == ("0", "1", "2")
    assert torch.bincount(dm.train_set[1]).tolist() == [5, 5, 5]
    folds = [CSVDataModule(path=str(kaggle / "train.csv"), num_folds=3, fold=f) for f in range(3)]
    for fold in folds:
        fold.setup("fit")
    assert sum(len(f.val_set[1]) for f in folds) == 240  # the folds partition the training part (80 % of 300)


def test_tabular_csv_trains_with_features_standardized_on_the_training_split(tmp_path, caplog):
    write_table(tmp_path / "table.csv")
    dm = CSVDataModule(path=str(tmp_path / "table.csv"), label_column="species", val_size=40)
    with caplog.at_level("INFO", logger="mlplab.data"):
        dm.setup("fit")
    assert "image-only parts" in caplog.text and not dm.is_image and dm.input_shape == (4,)
    assert dm.class_names == ("1", "2", "3")
    train_x = dm.train_set[0]
    assert torch.allclose(train_x.mean(0), torch.zeros(4), atol=1e-5) and torch.allclose(train_x.std(0), torch.ones(4), atol=1e-4)
    assert not torch.allclose(dm.val_set[0].mean(0), torch.zeros(4), atol=1e-5)  # validation did not set the statistics
    cfg = compose_config("train", [*TINY, "data=csv", f"data.path={tmp_path / 'table.csv'}", "data.label_column=species",
                         "data.val_size=40", "trainer.max_epochs=8", "data.batch_size=8"], tmp_path / "run")
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.8  # chance: 1/3
    report = evaluate(compose_config("eval", [f"ckpt_path={metrics['best_ckpt']}"], tmp_path / "eval"))
    assert report["test/acc"] == pytest.approx(metrics["test/acc"])
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file() and not (tmp_path / "eval" / "misclassified.png").exists()


# --- bad files: one line naming the file and the place -----------------------------------------------------

def bad_folder(tmp_path: Path, case: str) -> tuple[Path, str]:
    root = make_folder(tmp_path / case, per_class=3)
    if case == "unreadable":
        (root / "cross" / "1.png").write_bytes(b"not a picture")
        return root, f"{root / 'cross' / '1.png'} is not a readable image"
    if case == "empty class":
        (root / "dot").mkdir()
        return root, f"{root / 'dot'} holds no PNG/JPG/JPEG image"
    if case == "one class":
        for kind in ("cross", "bar"):
            for file in (root / kind).iterdir():
                file.unlink()
            (root / kind).rmdir()
        return root, "holds 1 class(es) (circle); training needs at least two"
    make_folder(root / "train", per_class=3)
    make_folder(root / "test", per_class=1, classes=("circle", "star"))
    return root, f"{root / 'test' / 'star'}: class 'star' never appears in training"


@pytest.mark.parametrize("case", ["unreadable", "empty class", "one class", "unseen test class"])
def test_bad_folders_are_one_line_errors(tmp_path, case):
    root, message = bad_folder(tmp_path, case)
    with pytest.raises(DataError) as err:
        _ = image_folder(root, tmp_path / "cache", val_size=1).data
    assert message in str(err.value) and "\n" not in str(err.value)


CSV_CASES = {
    "non-numeric cell": ("a,b,label\n1,2,0\n3,4,1\n5,x,0\n", {}, "bad.csv, line 4: column 'b': 'x' is not a number"),
    "empty cell": ("a,b,label\n1,2,0\n3,,1\n", {}, "bad.csv, line 3: column 'b': an empty cell"),
    "short row": ("a,b,label\n1,2,0\n3,4\n5,6,1\n", {}, "bad.csv, line 3: 2 values where the header has 3 columns"),
    "unknown label column": ("a,b,label\n1,2,0\n", {"label_column": "class"}, "data.label_column='class' is not a column of"),
    "no label column": ("a,b,label\n1,2,0\n", {"label_column": None}, "is not Kaggle's digit layout"),
    "one class": ("a,b,label\n1,2,0\n3,4,0\n", {}, "holds 1 class(es) (0); training needs at least two"),
    "unseen test label": ("a,b,label\n1,2,0\n3,4,1\n", {"test_path": "test"}, "test.csv, line 3: label 7 never appears"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_bad_csv_files_are_one_line_errors(tmp_path, case):
    text, settings, message = CSV_CASES[case]
    (tmp_path / "bad.csv").write_text(text)
    (tmp_path / "test.csv").write_text("a,b,label\n1,2,1\n3,4,7\n")
    settings = {"label_column": "label"} | settings
    if "test_path" in settings:
        settings["test_path"] = str(tmp_path / "test.csv")
    with pytest.raises((DataError, ConfigError)) as err:
        dm = CSVDataModule(path=str(tmp_path / "bad.csv"), val_size=1, **settings)
        dm.setup("fit")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_paper_grain_and_specks_do_not_move_the_crop(tmp_path):
    """A digit photographed on grainy paper with a speck of dirt is prepared like the same digit on clean paper."""
    rng = np.random.default_rng(0)
    clean = np.full((80, 80), 220, np.uint8)
    clean[20:60, 36:44] = 30  # a "1"
    grainy = np.clip(clean + rng.normal(0, 12, clean.shape) + np.linspace(-20, 20, 80)[None], 0, 255).astype(np.uint8)
    grainy[4:6, 70:72] = 90  # a speck far from the digit
    for name, pixels in (("clean.png", clean), ("grainy.png", grainy)):
        Image.fromarray(pixels).save(tmp_path / name)
    a, b = prepare_picture(tmp_path / "clean.png"), prepare_picture(tmp_path / "grainy.png")
    assert (b > 0.5).nonzero().float().mean(0).sub((a > 0.5).nonzero().float().mean(0)).abs().max() < 1  # same place
    assert b[a == 0].mean() < 0.02  # the paper around it is black, as in MNIST
