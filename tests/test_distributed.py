"""Two CPU processes (gloo), as under torchrun: data is sharded, gradients are averaged before every step, accuracy
counts are summed, and only rank 0 writes the run folder. Both processes must end with the same model and numbers."""

import json
import os
import socket

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, ckpt, out, results_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as td

    from gslora import RunConfig, load_checkpoint, run_forgetting
    from gslora.data.faces import bundled_faces

    data = bundled_faces(image_size=16, seed=3, views={"train": 30, "val": 4, "test": 8}, num_faces=20)
    model, meta = load_checkpoint(ckpt)
    cfg = RunConfig(tasks="1x4", epochs=3, batch_size=8, replay_ratio=0.3, lr=3e-3, device="cpu",
                    method_args={"lora_alpha": 8.0, "bound": 60.0, "beta": 1.0})
    res = run_forgetting(model, meta["classes"], data, cfg, out_dir=out)
    flat = torch.cat([p.detach().flatten() for p in res.model.parameters()])
    torch.save({"row": {k: res.rows[0][k] for k in ("acc_f", "acc_r", "steps")}, "params": flat},
               os.path.join(results_dir, f"rank{rank}.pt"))
    td.destroy_process_group()


def test_two_processes_train_in_sync(tmp_path, micro_model, micro_data):
    from gslora.models import save_checkpoint

    ckpt = save_checkpoint(micro_model, tmp_path / "micro.safetensors", micro_data.classes)
    out = tmp_path / "run"
    mp.spawn(_worker, args=(2, _free_port(), str(ckpt), str(out), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["params"], r1["params"])  # averaged gradients: identical models on both ranks
    assert r0["row"] == r1["row"]  # counts summed over both shards: identical accuracies
    before = torch.cat([p.detach().flatten() for p in micro_model.parameters()])
    assert not torch.equal(r0["params"], before)
    saved = json.loads((out / "results.json").read_text())  # written once, by rank 0
    assert saved["tasks"][0]["acc_f"] == r0["row"]["acc_f"]
    # each rank stepped through its half of the replay subset: 3 epochs of ceil(ceil(n / 2) / 8) steps
    half = -(-saved["tasks"][0]["replay_images"] // 2)
    assert r0["row"]["steps"] == 3 * -(-half // 8)
