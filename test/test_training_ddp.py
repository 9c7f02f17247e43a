"""ovs_training under torchrun: 2 CPU processes (gloo) at global batch 4 train as 1 process at batch 4."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "training"))  # ovs_training without installing it

pytest.importorskip("open_clip")
pytest.importorskip("timm")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from ovs_training.config import load_train_config  # noqa: E402
from ovs_training.trainer import Trainer  # noqa: E402
from test_eval_datasets import write_layout  # noqa: E402


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_two_gloo_ranks_match_one_process(tmp_path):
    """Same losses (the logged loss is the mean of the ranks' losses, each over its own 2 images) and the same
    trained tensors as one process, up to float summation order: the gradients are averaged before the clip."""
    config_data = yaml.safe_load((REPO / "training" / "configs" / "tiny_synthetic.yaml").read_text())
    config_data.update(max_iter=4, log_every=1, show_progress=False, device="cpu", checkpoint_every=2)
    config_data["data"].update(num_images=16)
    write_layout("ade20k_150", tmp_path / "ade", num_images=3)  # final ovs-eval, sharded over the training's group
    config_data["final_eval"] = {"segmenter": "tiny", "dataset": "ade20k_150", "root": str(tmp_path / "ade"),
                                 "set": ["text_cache_dir=null", "num_threads=1", "generator.input_short_side=64",
                                         "generator.max_long_side=96"]}
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(config_data))

    env = dict(os.environ, PYTHONPATH=str(REPO / "training"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    ddp_out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ovs_training.train", "--config", str(config_path), "--output-dir", str(ddp_out)]
    proc = subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = json.loads((ddp_out / "losses_from_step_0.json").read_text())
    assert ddp["world_size"] == 2 and len(ddp["losses"]) == 4

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = Trainer(load_train_config(config_path, output_dir=str(tmp_path / "single"))).train()
    finally:
        torch.set_num_threads(threads)
    assert ddp["losses"] == pytest.approx(single.losses, rel=1e-5, abs=1e-6)
    name = config_data["export_name"]
    a, b = _tensors(ddp_out / "export" / f"{name}.safetensors"), _tensors(single.export["weights"])
    assert set(a) == set(b)
    initial = Trainer(load_train_config(config_path, output_dir=str(tmp_path / "init")))
    params = {(k[len("classifier."):] if k.startswith("classifier.") else k): v
              for k, v in initial.model.named_parameters()}
    for key in a:
        if key == "psm.corr_proj_out.0.bias":  # one bias added to every class logit: the softmax CE is invariant
            continue  # to it, so its gradient is rounding noise (it moves 1e-7), which differs with the sum order
        moved = (b[key] - params[key].detach()).abs().max()
        assert moved > 0, key
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=float(moved) * 1e-3)
    # rank 0 alone wrote the run folder; the checkpoint holds both ranks' RNG states
    ckpt = torch.load(str(ddp_out / "checkpoints" / "step_0000002.pth"), weights_only=False)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    assert not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])  # per-rank seeds
    assert sorted(p.name for p in (ddp_out / "export").iterdir()) == [f"{name}.safetensors", f"{name}.yaml"]
    # in-loop validation (tiny config: 48 held-out images): each rank scores its shard, the counts are summed, so
    # the 2-process numbers are the 1-process ones, every mask counted once
    def history(out):
        return [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]

    ddp_val, single_val = history(ddp_out), history(single.output_dir)
    assert [r["step"] for r in ddp_val] == [r["step"] for r in single_val] == [0, 4]
    assert ddp_val[0] == single_val[0]
    assert ddp_val[-1]["num_masks"] == single_val[-1]["num_masks"]
    assert ddp_val[-1]["mask_macc"] == pytest.approx(single_val[-1]["mask_macc"], abs=3.0)
    final = json.loads((ddp_out / "final_eval" / "metrics.json").read_text())
    assert (final["world_size"], final["evaluated"], final["errors"]) == (2, 3, [])
    assert single.final_eval["world_size"] == 1 and single.final_eval["evaluated"] == 3
