"""EventGPT checkpoints in each original layout (harness/models/tiny_layouts.py): loading,
`ppbench checkpoint inspect|convert`, fp32 hf == static on the exact inputs, and `ppbench run
--profile real` on every layout."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from harness.cli import main
from harness.data.dsec import Events
from harness.data.event_images import events_to_images
from harness.errors import ModelLoadError
from harness.models.checkpoint_tools import convert_checkpoint, inspect_checkpoint
from harness.models.profiles import load_drafter
from harness.models.tiny import ensure_tiny_checkpoints
from harness.models.tiny_layouts import LAYOUTS, build_layouts

TOWER = "model.visual_tower.visual_tower."


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    paths = build_layouts(root)
    paths["converted"] = root / "converted"
    convert_checkpoint(paths["pickle"], paths["converted"], allow_pickle=True)
    return paths


def _tower_state(runner):
    from harness.models.eventgpt import canonical_key

    return {canonical_key(TOWER + k): v for k, v in runner.model.model.visual_tower.visual_tower.state_dict().items()}


def test_tower_inside_wins_over_the_folder(layouts):
    """model/EventChatModel.py: VisualTower loads the folder, then from_pretrained loads the
    checkpoint's tower tensors over it (the folder here holds other values: half of them)."""
    from harness.models.eventgpt import canonical_key

    runner = load_drafter("real", path=layouts["tower-inside"], quant="none")
    sd = load_file(ensure_tiny_checkpoints()["drafter"] / "model.safetensors")
    want = {canonical_key(k): v for k, v in sd.items() if k.startswith(TOWER)}
    got = _tower_state(runner)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert runner.tower_source["weights_from"] == "checkpoint" and runner.tower_source["config_from"] == "folder"
    assert (runner.processing.shortest_edge, runner.processing.crop_height) == (32, 28)


def test_tower_from_the_mm_visual_tower_folder(layouts):
    """Tower tensors missing from the checkpoint come from the folder's vision_model.* (its
    text-model tensors are ignored), its config from the folder's CLIPConfig."""
    from harness.models.eventgpt import canonical_key

    runner = load_drafter("real", path=layouts["tower-folder"], quant="none")
    folder = load_file(layouts["tower-folder"].parent / "clip-vit-tiny" / "model.safetensors")
    want = {canonical_key(TOWER + k): v for k, v in folder.items() if k.startswith("vision_model.")}
    got = _tower_state(runner)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert runner.tower_source["weights_from"] == "folder"
    assert runner.n_visual_tokens == 5 + (28 // 14) ** 2 + 1


def test_hub_id_without_a_local_copy_says_what_to_download(layouts, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    bad = tmp_path / "ckpt"
    shutil.copytree(layouts["tower-folder"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(dict(cfg, mm_visual_tower="openai/clip-vit-large-patch14-336")))
    with pytest.raises(ModelLoadError, match="not a local folder.*huggingface-cli download "
                                             "openai/clip-vit-large-patch14-336"):
        load_drafter("real", path=bad, quant="none")


def test_a_hub_id_found_in_the_local_cache_is_used(layouts, tmp_path, monkeypatch):
    """A hub id resolves to its snapshot in the local Hugging Face cache (no download)."""
    cache = tmp_path / "hub"
    snap = cache / "models--org--clip-tiny" / "snapshots" / "abc"
    shutil.copytree(layouts["tower-folder"].parent / "clip-vit-tiny", snap)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(layouts["tower-folder"], ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(dict(cfg, mm_visual_tower="org/clip-tiny")))
    runner = load_drafter("real", path=ckpt, quant="none")
    assert runner.tower_source["folder"] == str(snap)


def test_sharded_safetensors_and_the_converted_pickle_load(layouts):
    for kind in ("slow-tokenizer", "converted"):
        runner = load_drafter("real", path=layouts[kind], quant="none")
        assert runner.model.get_input_embeddings().weight.shape[0] == len(runner.tokenizer)


def test_pickle_is_refused_then_converted_once(layouts, tmp_path):
    with pytest.raises(ModelLoadError, match="ppbench checkpoint convert"):
        load_drafter("real", path=layouts["pickle"], quant="none")
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        convert_checkpoint(layouts["pickle"], tmp_path / "x")
    files = sorted(p.name for p in layouts["converted"].iterdir())
    assert "model.safetensors.index.json" in files and not any(f.endswith(".bin") for f in files)
    pickled = {}
    for f in sorted(layouts["pickle"].glob("*.bin")):
        pickled.update(torch.load(f, weights_only=True))
    converted = {}
    for f in sorted(layouts["converted"].glob("*.safetensors")):
        converted.update(load_file(f))
    assert set(pickled) == set(converted) and all(torch.equal(pickled[k], converted[k]) for k in pickled)
    with pytest.raises(ModelLoadError, match="not empty"):
        convert_checkpoint(layouts["pickle"], layouts["converted"], allow_pickle=True)


@pytest.mark.parametrize("kind", [*LAYOUTS, "converted"])
def test_inspect_reports_each_layout(layouts, kind, capsys):
    info = inspect_checkpoint(layouts[kind])
    if kind == "pickle":
        assert any("ppbench checkpoint convert" in p for p in info["problems"])
        return
    assert info["problems"] == [], info["problems"]
    assert info["tower"]["config_from"] == "folder"
    assert info["tower"]["weights_from"] == ("folder" if kind in ("tower-folder", "converted") else "checkpoint")
    assert info["visual_tokens"] == {1: 6, 5: 10}
    assert info["tokenizer"]["added"] == ["<ev_patch>"]
    assert ("SentencePiece" in info["tokenizer"]["kind"]) == (kind == "slow-tokenizer")
    assert main(["checkpoint", "inspect", str(layouts[kind])]) == 0
    assert "problems: none" in capsys.readouterr().out


def test_inspect_names_missing_weights(layouts, tmp_path):
    bad = tmp_path / "ckpt"
    shutil.copytree(layouts["tower-inside"], bad)
    sd = load_file(bad / "model.safetensors")
    sd.pop("model.feature_adaptor.weight")
    from safetensors.torch import save_file

    save_file(sd, bad / "model.safetensors")
    info = inspect_checkpoint(bad)
    assert any("missing weights" in p and "model.feature_adaptor.weight" in p for p in info["problems"])
    assert main(["checkpoint", "inspect", str(bad)]) == 1


@pytest.mark.parametrize("n_images", [1, 5])
def test_fp32_hf_and_static_prefill_and_greedy_tokens_are_identical(layouts, n_images):
    """The exact inputs (1003 events, a sparse chunk, repeated pixels) through stages 2-5: the hf
    and static decode paths give bit-identical prefill logits and the same greedy tokens."""
    rng = np.random.default_rng(5)
    n = 1003
    x, y = rng.integers(0, 640, n), rng.integers(0, 480, n)
    x[400:600], y[400:600] = rng.integers(0, 37, 200), rng.integers(0, 21, 200)
    events = Events(x=x.astype(np.uint16), y=y.astype(np.uint16), t=np.arange(n, dtype=np.int64),
                    p=rng.integers(0, 2, n).astype(np.uint8))
    runner = load_drafter("real", path=layouts["slow-tokenizer"], quant="none", event_images=n_images)
    prepared = runner.preprocess(events_to_images(events, n_images), "Describe in detail what happened in the scene.")
    results = {}
    for impl in ("hf", "static"):
        runner.use_decode_impl(impl, max_len=256)
        with torch.inference_mode():
            cache, logits = runner.prefill(runner.encode_vision(prepared))
            tokens = [int(logits.argmax())]
            for _ in range(15):
                tokens.append(int(runner.decode(torch.tensor([tokens[-1]]), cache).argmax()))
        results[impl] = (logits, tokens)
    assert torch.equal(results["hf"][0], results["static"][0])
    assert results["hf"][1] == results["static"][1]


def test_ppbench_run_profile_real_on_every_layout(layouts, tmp_path):
    """`ppbench run --profile real` end to end (1 sample, stages only) on each layout."""
    target = ensure_tiny_checkpoints()["target"]
    for kind in ("tower-inside", "tower-folder", "slow-tokenizer", "converted"):
        out = tmp_path / kind
        rc = main(["run", "--profile", "real", "--drafter-path", str(layouts[kind]), "--target-path", str(target),
                   "--durations", "1s", "--samples-per-duration", "1", "--warmup", "0", "--max-new-tokens", "3",
                   "--engine", "off", "--no-progress", "--out", str(out), "--event-images", "1",
                   "--videollava-prompt", "seed"])
        assert rc == 0, kind
        meta = json.loads((out / "meta.json").read_text())
        assert meta["event_images"] == 1 and meta["model_inputs"]["drafter"]["visual_tokens"] == 6
        assert meta["model_inputs"]["target"]["prompt_template"] == "seed"
        report = (out / "report.md").read_text()
        assert "prompt template `seed`" in report and "1 event image(s)" in report
        records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
        assert records and not any(r.get("error") for r in records)
