"""Vocabulary parsing/validation, benchmark files, seen/unseen and the train->test LUT."""
from pathlib import Path

import numpy as np
import pytest

from ovs_ros.templates import TEMPLATES, get_templates
from ovs_ros.vocabulary import (
    Vocabulary,
    VocabularyEntry,
    VocabularyError,
    seen_classes,
    train_to_test_lut,
)

REPO = Path(__file__).resolve().parents[1]
VOCAB_DIR = REPO / "config" / "vocabularies"
SHARED_TSV = REPO.parent / "shared" / "data" / "vocabularies"


def test_templates():
    assert [len(TEMPLATES[k]) for k in ("t1", "t14", "t80")] == [1, 14, 80]
    assert TEMPLATES["t14"][0] == "a photo of a {}." and TEMPLATES["t14"][-1] == "There is a large {} in the scene."
    assert TEMPLATES["t80"][0] == "a bad photo of a {}." and TEMPLATES["t80"][-1] == "a tattoo of the {}."
    for ts in TEMPLATES.values():
        assert all(t.count("{}") == 1 for t in ts) and len(set(ts)) == len(ts)
    with pytest.raises(KeyError, match="t14"):
        get_templates("t7")


def test_from_strings():
    v = Vocabulary.from_strings(["person, child ,man", "stuff:sky,clouds", "car", "road"], stuff_classes=["road"])
    assert len(v) == 4
    assert v.labels == ("person", "sky", "car", "road")
    assert v.names[0] == ("person", "child", "man")
    assert v.is_thing.tolist() == [True, False, True, False]
    assert v.phrases == ("person", "child", "man", "sky", "clouds", "car", "road")
    assert v.synonym_class_index.tolist() == [0, 0, 0, 1, 1, 2, 3]
    assert v.synonym_class_index.dtype == np.int64
    assert v[1] == VocabularyEntry(("sky", "clouds"), is_stuff=True) and v[1].label == "sky"
    with pytest.raises(ValueError):  # read-only arrays: the vocabulary is immutable
        v.is_thing[0] = False
    assert v == Vocabulary.from_strings(["person,child,man", "stuff:sky,clouds", "car", "stuff:road"])
    assert hash(v) == hash(Vocabulary.from_strings(["person,child,man", "stuff:sky,clouds", "car", "stuff:road"]))


def test_in_class_duplicate_synonyms_dropped():
    v = Vocabulary.from_strings(["bag,bags,bag"])
    assert v.phrases == ("bag", "bags")


@pytest.mark.parametrize("classes,match", [
    ([], "empty"),
    (["person", ""], "class #1.*empty"),
    (["person", "car,,cars"], "class #1: name #1 is empty"),
    (["person", 3], "class #1.*int"),
    (["person", "car", "person,human"], "duplicate label 'person'"),
    (["x" * 201], "201 characters"),
    ("person,car", "list of strings"),
])
def test_from_strings_errors(classes, match):
    with pytest.raises(VocabularyError, match=match):
        Vocabulary.from_strings(classes)


def test_max_classes_and_unknown_stuff():
    with pytest.raises(VocabularyError, match="max_classes=3"):
        Vocabulary.from_strings(["a", "b", "c", "d"], max_classes=3)
    with pytest.raises(VocabularyError, match="stuff_classes.*'sky'"):
        Vocabulary.from_strings(["a", "b"], stuff_classes=["sky"])
    assert isinstance(VocabularyError("x"), ValueError)


def test_yaml_round_trip_and_errors(tmp_path):
    p = tmp_path / "v.yaml"
    p.write_text("# header\nclasses:\n  - {names: [person, child], stuff: false, color: [1, 2, 3], id: 7}\n"
                 "  - {names: [sky], stuff: true}\n  - stuff:road,street\ntemplates: t14\n")
    v = Vocabulary.from_yaml(p)
    assert v.labels == ("person", "sky", "road") and v.is_thing.tolist() == [True, False, False]
    assert v.templates == "t14" and v[0].color_rgb == (1, 2, 3) and v[0].dataset_id == 7
    assert Vocabulary.from_dict(v.to_dict()) == v
    assert Vocabulary.from_any(p) == v and Vocabulary.from_any(str(p)) == v and Vocabulary.from_any(v) is v
    for text, match in [
        ("classes: []\n", "empty"),
        ("klasses: [a]\n", "unknown key"),
        ("classes:\n  - {names: [a], thing: true}\n", "unknown key.*thing"),
        ("classes:\n  - {names: [a], stuff: 'no'}\n", "'stuff' must be true or false"),
        ("classes:\n  - {names: a}\n", "names must be a list"),
        ("classes:\n  - {names: [a], color: [1, 2]}\n", "color"),
        ("classes: [a]\ntemplates: t99\n", "unknown template set"),
        ("classes: [a\n", "not valid YAML"),
    ]:
        p.write_text(text)
        with pytest.raises(VocabularyError, match=match):
            Vocabulary.from_yaml(p)
    with pytest.raises(VocabularyError, match="not found"):
        Vocabulary.from_yaml(tmp_path / "missing.yaml")


def test_from_any():
    assert Vocabulary.from_any(["a,b", "stuff:c"]).labels == ("a", "c")
    assert Vocabulary.from_any((VocabularyEntry(("a",)),)).labels == ("a",)
    assert Vocabulary.from_any({"classes": ["a"]}).labels == ("a",)
    with pytest.raises(VocabularyError, match=".yaml"):
        Vocabulary.from_any("person,car")
    with pytest.raises(VocabularyError, match="cannot build"):
        Vocabulary.from_any(3)


def test_tsv(tmp_path):
    p = tmp_path / "v.tsv"
    p.write_text("id\tisthing\tcolor_rgb\tnames\n1\t1\t220,20,60\tperson,child\n5\t0\t\tsky,clouds\n9\t\t\twall\n")
    v = Vocabulary.from_tsv(p)
    assert v.labels == ("person", "sky", "wall") and v.is_thing.tolist() == [True, False, False]
    assert v[0].color_rgb == (220, 20, 60) and v[1].color_rgb is None and v[2].dataset_id == 9
    p.write_text("id\tnames\n1\tperson\n")
    with pytest.raises(VocabularyError, match="header"):
        Vocabulary.from_tsv(p)


@pytest.mark.parametrize("name,k,things", [("coco_panoptic", 133, 80), ("ade20k_150", 150, 100),
                                           ("coco_stuff_171", 171, 80), ("pascal_context_59", 59, 0),
                                           ("pascal_voc_21", 21, 21), ("cityscapes", 19, 8)])
def test_generated_benchmark_files(name, k, things):
    v = Vocabulary.from_yaml(VOCAB_DIR / f"{name}.yaml")
    assert len(v) == k and int(v.is_thing.sum()) == things
    header = (VOCAB_DIR / f"{name}.yaml").read_text().splitlines()[:6]
    assert any("Apache License" in line for line in header) and any("MaskCLIPpp" in line for line in header)
    if (SHARED_TSV / f"{name}.tsv").is_file():  # generated files match their source
        assert Vocabulary.from_tsv(SHARED_TSV / f"{name}.tsv") == v


def test_coco_panoptic_content():
    v = Vocabulary.from_yaml(VOCAB_DIR / "coco_panoptic.yaml")
    assert v.names[0][:3] == ("person", "child", "girl") and v[0].dataset_id == 1 and v[0].color_rgb == (220, 20, 60)
    assert v.labels[-1] == "rug" and v[-1].dataset_id == 200 and v[-1].is_stuff


@pytest.mark.skipif(not (SHARED_TSV / "ade20k_847.tsv").is_file(), reason="shared/ not present")
def test_ade847_needs_duplicate_labels_flag():
    with pytest.raises(VocabularyError, match="allow_duplicate_labels"):
        Vocabulary.from_tsv(SHARED_TSV / "ade20k_847.tsv")
    v = Vocabulary.from_tsv(SHARED_TSV / "ade20k_847.tsv", allow_duplicate_labels=True)
    assert len(v) == 847


def test_seen_and_lut_by_hand():
    test = Vocabulary.from_strings(["person,man", "sky", "car,automobile", "tree,trees", "bus"])
    train = [["man", "woman"], ["vehicle"], ["trees", "bush"], ["automobile", "car"], ["tree"], ["person"]]
    assert seen_classes(test, train).tolist() == [True, False, True, True, False]
    lut = train_to_test_lut(test, train)
    assert lut.dtype == np.int64 and lut.shape == (7,)
    # man->person(0); vehicle->none(5); trees->tree(3); automobile->car(2); tree->3; person->0; void->5
    assert lut.tolist() == [0, 5, 3, 2, 3, 0, 5]
    # comma strings and a Vocabulary are accepted as training names
    as_strings = ["man,woman", "vehicle", "trees,bush", "automobile,car", "tree", "person"]
    assert train_to_test_lut(test, as_strings).tolist() == lut.tolist()
    assert seen_classes(test, Vocabulary.from_strings(["bus"])).tolist() == [False] * 4 + [True]


def test_lut_first_overlapping_test_class():
    test = Vocabulary.from_strings(["wall,walls", "stone wall,wall stone", "building,wall"])
    lut = train_to_test_lut(test, [["stone wall", "wall"]])
    assert lut.tolist() == [0, 3]  # "wall" is in test class 0 and 2, "stone wall" in 1: the first in test order wins


def test_coco_on_ade_seen():
    coco = Vocabulary.from_yaml(VOCAB_DIR / "coco_panoptic.yaml")
    ade = Vocabulary.from_yaml(VOCAB_DIR / "ade20k_150.yaml")
    seen = seen_classes(ade, coco.names)
    assert 0 < seen.sum() < len(ade)
    lut = train_to_test_lut(ade, coco)
    assert lut[-1] == len(ade) and lut.shape == (len(coco) + 1,)
    matched = lut[:-1] < len(ade)
    assert seen[lut[:-1][matched]].all()  # every matched training class lands on a seen test class
    # a seen class need not be a target: its training class may map to an earlier test class first
    assert set(lut[:-1][matched].tolist()) <= set(np.nonzero(seen)[0].tolist())
