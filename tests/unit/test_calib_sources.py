"""Relative paths in `--calib` lists and data yamls resolve as ultralytics resolves them, checked against
ultralytics' own functions (``BaseDataset.get_img_files``, ``check_det_dataset``) on layouts where the other
readings would pick different images."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.fakes import write_images
from trtq.errors import TrtqError
from trtq.images import resolve_image_paths


def ultralytics_list(source: Path) -> list[Path]:
    """The images ultralytics' dataset reads from a file/folder (its ``get_img_files``), as absolute paths."""
    base = pytest.importorskip("ultralytics.data.base")
    stub = SimpleNamespace(prefix="", fraction=1.0)
    return sorted(Path(p).resolve() for p in base.BaseDataset.get_img_files(stub, str(source)))


def names(paths: list[Path]) -> list[str]:
    return sorted(str(p.resolve()) for p in paths)


@pytest.fixture
def two_trees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The same relative names under the working directory (4 images) and beside the list/yaml (2 images)."""
    cwd = tmp_path / "cwd"
    write_images(cwd / "ds" / "images" / "train", 4)
    write_images(cwd / "ds" / "images" / "val", 1)
    conf = tmp_path / "conf"
    write_images(conf / "ds" / "images" / "train", 2)
    write_images(conf / "ds" / "images" / "val", 1)
    monkeypatch.chdir(cwd)
    return tmp_path


def test_list_entries_resolve_like_ultralytics(two_trees: Path) -> None:
    conf = two_trees / "conf"
    cwd_imgs = sorted((two_trees / "cwd" / "ds" / "images" / "train").iterdir())
    conf_imgs = sorted((conf / "ds" / "images" / "train").iterdir())
    lst = conf / "list.txt"
    lst.write_text(
        "".join(f"ds/images/train/{p.name}\n" for p in cwd_imgs)  # bare: from the working directory
        + f"./ds/images/train/{conf_imgs[0].name}\n"  # ./: from the list's folder
        + f"{conf_imgs[1]}\n"  # absolute
    )
    ours = resolve_image_paths(lst)
    assert names(ours) == names(ultralytics_list(lst))
    assert len(ours) == 6 and all(p.is_file() for p in ours)


def test_data_yaml_path_is_read_from_the_working_directory_first(two_trees: Path) -> None:
    pytest.importorskip("ultralytics")
    from ultralytics.data.utils import check_det_dataset

    yaml_file = two_trees / "conf" / "data.yaml"
    yaml_file.write_text("path: ds\ntrain: images/train\nval: images/val\nnames: {0: a}\n")
    data = check_det_dataset(str(yaml_file), autodownload=False)
    theirs = ultralytics_list(Path(data["train"]))
    ours = resolve_image_paths(yaml_file)
    assert names(ours) == names(theirs)
    assert len(ours) == 4  # the working directory's ds/, not the yaml folder's (2 images)


def test_data_yaml_with_a_list_split_uses_every_listed_image_or_names_the_missing(two_trees: Path) -> None:
    pytest.importorskip("ultralytics")
    from ultralytics.data.utils import check_det_dataset

    conf = two_trees / "conf"
    cwd_imgs = sorted((two_trees / "cwd" / "ds" / "images" / "train").iterdir())
    (conf / "ds" / "train.txt").write_text("".join(f"./images/train/{p.name}\n" for p in cwd_imgs))
    yaml_file = conf / "data.yaml"
    yaml_file.write_text(f"path: {conf / 'ds'}\ntrain: train.txt\nval: images/val\nnames: {{0: a}}\n")
    # ./ entries are read beside the list, which holds 2 of the 4 listed names: ultralytics would train on 2
    data = check_det_dataset(str(yaml_file), autodownload=False)
    theirs = [p for p in ultralytics_list(Path(data["train"])) if p.exists()]
    assert len(theirs) == 2
    with pytest.raises(TrtqError, match=r"2 of 4 listed images do not exist \(\./images/train/img002"):
        resolve_image_paths(yaml_file)
    # with every listed file present, the same images as ultralytics
    write_images(conf / "ds" / "images" / "train", 4)
    assert names(resolve_image_paths(yaml_file)) == names(ultralytics_list(Path(data["train"])))
