"""The trained tiny pair (harness/models/trained.py): ground truth and answers follow the scene,
each model sees only its own modality, and training is deterministic and round-trips through
save_pretrained / the profile's from_pretrained loader."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from harness.data.synthetic import SENSOR_W, Scene, Shape
from harness.models import trained as T
from harness.models.profiles import load_pair


def test_answers_parse_back_to_their_fields():
    """Every answer the template can produce parses back to the fields it was made from."""
    for text in T.answer_corpus()[1:]:
        assert T.answer_text(T.parse_answer(text)) == text
    assert T.parse_answer(T.NO_OBJECT) == {} and T.answer_text({}) == T.NO_OBJECT
    assert T.parse_answer("something else") == {}


def test_truth_is_the_object_covering_most_of_the_crop():
    """What counts is the area each shape covers inside the centre crop at the clip's end, after
    the shapes drawn later cover it: a big shape outside the crop or under another shape loses to a
    smaller one in full view. The answer names its colour bits, kind, the side of its visible part
    and its horizontal motion."""
    tex = np.full((12, 16, 3), 0.5, np.float32)
    outside = Shape("rect", (20.0, 300.0), (50.0, 0.0), (80.0, 40.0), (1.0, 0.0, 0.0))     # mostly x < crop
    big = Shape("rect", (300.0, 300.0), (40.0, 0.0), (60.0, 30.0), (1.0, 1.0, 1.0))
    cover = Shape("rect", (300.0, 300.0), (-40.0, 0.0), (50.0, 25.0), (1.0, 0.0, 0.0))     # drawn over big
    ball = Shape("disk", (450.0, 300.0), (-60.0, 0.0), (30.0, 30.0), (0.1, 0.9, 0.05))
    truth = lambda *shapes: T.scene_truth(Scene(tex, shapes), t1_s=0.0)  # noqa: E731
    assert truth(outside, big, ball) == {"colour": "white", "kind": "car", "side": "left", "direction": "right"}
    assert truth(outside, big, cover, ball) == {"colour": "red", "kind": "car", "side": "left", "direction": "left"}
    assert truth(outside, ball) == {"colour": "green", "kind": "ball", "side": "right", "direction": "left"}
    assert truth(Shape("rect", (20.0, 300.0), (0.0, 0.0), (30.0, 20.0), (1.0, 0.0, 0.0))) == {}
    assert T.CROP_X == ((SENSOR_W - 480) / 2, (SENSOR_W + 480) / 2)


def test_examples_are_deterministic_and_keep_modalities_apart():
    """Same seed, same examples; the drafter's event images hold only white, red and blue (event
    polarity, no scene colour), the target's frames hold the scene's colours."""
    a, b = T.make_examples(3, 0, 3), T.make_examples(3, 0, 3)
    for x, y in zip(a, b):
        assert x.answer == y.answer and x.question == y.question
        assert all(np.array_equal(u, v) for u, v in zip(x.event_images, y.event_images))
        assert np.array_equal(x.frames, y.frames)
    for e in a:
        colours = np.unique(np.concatenate([im.reshape(-1, 3) for im in e.event_images]), axis=0)
        assert {tuple(c) for c in colours} <= {(255, 255, 255), (255, 0, 0), (0, 0, 255)}
        assert len(e.event_images) == 5 and e.frames.shape[0] == 8
        assert len(np.unique(e.frames.reshape(-1, 3), axis=0)) > 10


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(T, "N_TRAIN", {"drafter": 4, "target": 8})
    mp.setattr(T, "N_EVAL", 4)
    mp.setattr(T, "STEPS", {"drafter": 2, "target": 2})
    roots = [tmp_path_factory.mktemp(f"trained{i}") for i in range(2)]
    paths = [T.ensure_trained_checkpoints(r) for r in roots]
    yield roots, paths
    mp.undo()


def test_training_is_deterministic_for_a_seed(small_build):
    """Two builds with one seed write identical weights and identical losses."""
    _, paths = small_build
    for which in ("drafter", "target"):
        a, b = (load_file(p[which] / "model.safetensors") for p in paths)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), which
    logs = [json.loads(p["log"].read_text()) for p in paths]
    assert logs[0]["drafter_loss"] == logs[1]["drafter_loss"] and logs[0]["target_loss"] == logs[1]["target_loss"]
    for key in ("drafter_accuracy", "target_accuracy"):
        assert set(logs[0]["eval"][key]) == {*T.FIELDS, "exact"}
    assert 0.0 <= logs[0]["eval"]["token_agreement"] <= 1.0


def test_profile_loads_the_saved_pair(small_build):
    """The trained profile loads both checkpoints through from_pretrained (no retraining: the
    marker is there), with the trained sizes and one shared tokenizer: the drafter's has exactly
    the event tokens EventGPT's loader adds on top (inference.py: <ev_patch>)."""
    roots, paths = small_build
    drafter, target = load_pair("trained", quant="none", dtype=torch.float32, cache_dir=roots[0])
    for cfg in (drafter.vision_config, target.config.vision_config):
        assert (cfg.image_size, cfg.patch_size) == (56, 28)
    dv, tv = drafter.tokenizer.get_vocab(), target.tokenizer.get_vocab()
    assert {k: v for k, v in dv.items() if k in tv} == tv and set(dv) - set(tv) == {"<ev_patch>"}
    e = T.make_examples(0, 1, 1, (drafter, target))[0]
    assert e.event_images is None and set(e.prepared) == {"drafter", "target"}
    for r in (drafter, target):
        out = T.greedy_answer(r, e.prepared[r.role])
        assert 1 <= len(out) <= T.MAX_ANSWER_TOKENS
