"""build --label-from: the choices, the CSV file's parsing and its errors (sources.labels)."""

import pytest

from dahash_index.sources.labels import SceneLabels, labels_from

ROOT = "/data/archive"


def test_folder_and_none():
    assert labels_from("folder").label(f"{ROOT}/beach/b0.jpg", None, "beach", ROOT) == "beach"
    assert labels_from("none").label(f"{ROOT}/beach/b0.jpg", None, "beach", ROOT) is None
    assert (labels_from("folder").recorded, labels_from("none").recorded) == (None, "none")


def test_csv_by_url_by_path_under_the_root_and_by_tar_member(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("\ufeffurl,label\n"  # a spreadsheet's byte-order mark and header
                   f"{ROOT}/a/x.tif,wetland\n"
                   "b/y.tif, cropland \n"
                   "\n"
                   "part-1.tar/inner/z.jpg,urban\n"
                   "c/unlabelled.tif,\n")
    labels = labels_from(str(csv))
    assert labels.source == "csv" and len(labels.digest) == 12
    assert labels.recorded == f"csv {labels.digest}"
    assert labels.label(f"{ROOT}/a/x.tif", None, "a", ROOT) == "wetland"
    assert labels.label(f"{ROOT}/b/y.tif", None, "b", ROOT + "/") == "cropland"
    assert labels.label(f"{ROOT}/part-1.tar", "inner/z.jpg", "inner", ROOT) == "urban"
    assert labels.label(f"{ROOT}/c/unlabelled.tif", None, "c", ROOT) is None
    assert labels.label(f"{ROOT}/d/absent.tif", None, "d", ROOT) is None


@pytest.mark.parametrize("text, message", [
    ("url,label\na.tif\n", "line 2: expected url,label, got 1 field(s)"),
    ("a.tif,x,y\n", "line 1: expected url,label, got 3 field(s)"),
    (",x\n", "line 1: expected url,label, got 2 field(s) and an empty url"),
    ("a.tif,x\na.tif,y\n", "line 2: a.tif is labelled both 'x' and 'y'"),
    ("url,label\n", "no url,label lines"),
])
def test_a_bad_csv_is_one_line_naming_the_file_and_line(tmp_path, text, message):
    csv = tmp_path / "labels.csv"
    csv.write_text(text)
    with pytest.raises(ValueError) as err:
        labels_from(str(csv))
    assert str(err.value) == f"{csv}: {message}"


def test_neither_a_choice_nor_a_file(tmp_path):
    with pytest.raises(ValueError, match=r"--label-from foldr: neither none nor folder nor a "
                                         r"readable CSV file \("):
        labels_from("foldr")
    binary = tmp_path / "l.csv"
    binary.write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(ValueError, match=f"{binary}: not a UTF-8 CSV file"):
        labels_from(str(binary))


def test_a_repeated_line_is_no_conflict(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("a.tif,x\na.tif,x\n")
    assert labels_from(str(csv)).by_scene == {"a.tif": "x"}
    assert SceneLabels().source == "none"
