"""Why the audit's probe reads the forgotten classes better than the in-loop probe: several linear read-outs on the
same embeddings of the original, the forgotten (GS-LoRA), the head-forgetting and the retrained model of one finished
depth-proof run (benchmarks/depth_proof.py), scored on the forgotten classes' test images.

    .venv/bin/python benchmarks/probe_gap.py runs/depth/proof-orl-4x5 --head runs/depth/proof-orl-4x5-head

Read-outs (all fitted among every class, scored on the forgotten classes):
    audit        logistic regression on standardised train-split embeddings, test split (the audit's probe)
    audit_l2     the same on L2-normalised embeddings, no standardisation
    ncm          nearest class mean (cosine) of the train split, test split
    loo_test     the in-loop probe (leave-one-out ridge) on the test split alone (held-out images only)
    loo_all      leave-one-out ridge on train and test split together
    eta2_train / eta2_test   the collapse term's η² of the forgotten classes on each split (what the loss drives to 0)

With --erosion: the model after each task (the original plus the run's stored adapters, merged in turn) and, per
group of classes by the task that forgot them, the in-loop probe on that task's check images and η² on their test
images: whether a later task undoes the depth an earlier one reached; and the cosine between the weight updates of
every two tasks, per LoRA layer. With --blocks: task 1's forgotten classes read by the in-loop probe at the output
of every block (token mean) and at the embedding, under the original, the model after tasks 1 and 2 and the retrained
model. With --retention: per task, how far it moved the kept classes' replay images (what the anchor holds) against
their test images, and their accuracy on both before and after.
Raw numbers: docs/results/probe_gap.json (one key per run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "docs" / "results" / "probe_gap.json"


def readouts(train_emb, train_y, test_emb, test_y, forget) -> dict:
    from gslora.audit import AuditConfig, _acc, _probe_predict
    from gslora.depth import collapse_loss, probe_accuracy

    cfg = AuditConfig()
    out = {"audit": _acc(_probe_predict(train_emb, train_y, test_emb, cfg), test_y, forget)}
    n_tr, n_te = F.normalize(train_emb, dim=-1), F.normalize(test_emb, dim=-1)
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=cfg.probe_c, max_iter=cfg.probe_max_iter).fit(n_tr.numpy(), train_y.numpy())
    out["audit_l2"] = _acc(torch.as_tensor(lr.predict(n_te.numpy())), test_y, forget)
    classes = torch.unique(train_y)
    means = F.normalize(torch.stack([n_tr[train_y == c].mean(0) for c in classes]), dim=-1)
    out["ncm"] = _acc(classes[(n_te @ means.T).argmax(1)], test_y, forget)
    out["loo_test"] = probe_accuracy(test_emb, test_y, forget)["acc"]
    out["loo_all"] = probe_accuracy(torch.cat([train_emb, test_emb]), torch.cat([train_y, test_y]), forget)["acc"]
    fset = torch.as_tensor(sorted(forget))
    for name, e, y in (("eta2_train", train_emb, train_y), ("eta2_test", test_emb, test_y)):
        m = torch.isin(y, fset)
        out[name] = float(collapse_loss(e[m], y[m]))
    return out


def task_classes(task: dict) -> torch.Tensor:
    """The classes a task's check set holds (and its probe reads): remaining, forgotten now and earlier."""
    return torch.as_tensor(sorted(set(task["remain"]) | set(task["forget"]) | set(task.get("old", []))))


def by_group(model, data, tasks: list[dict]) -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
    """Per task group (the classes each task forgot): the in-loop probe on that task's check images and η² on their
    test images, under ``model``; and the L2-normalised test embeddings with their labels (for :func:`drift`)."""
    from gslora.audit import embed_dataset
    from gslora.depth import collapse_loss, probe_accuracy

    model.eval()
    tr_e, tr_y = embed_dataset(model, data.train, "cpu")
    va_e, va_y = embed_dataset(model, data.val, "cpu")
    te_e, te_y = embed_dataset(model, data.test, "cpu")
    probe, eta2 = [], []
    for t in tasks:
        idx = torch.as_tensor(t["indices"]["check_train"], dtype=torch.long)
        e, y = torch.cat([va_e, tr_e[idx]]), torch.cat([va_y, tr_y[idx]])
        keep = torch.isin(y, task_classes(t))
        probe.append(round(probe_accuracy(e[keep], y[keep], t["forget"])["acc"], 1))
        m = torch.isin(te_y, torch.as_tensor(t["forget"]))
        eta2.append(round(float(collapse_loss(te_e[m], te_y[m])), 3))
    return {"check_probe_by_group": probe, "test_eta2_by_group": eta2}, (F.normalize(te_e, dim=-1), te_y)


def drift(before: tuple, after: tuple, tasks: list[dict]) -> dict:
    """Mean distance the L2-normalised test embeddings (``by_group``'s second value) moved between two models, per
    task group and for the classes no task forgot (the anchor's job)."""
    move = (after[0] - before[0]).norm(dim=-1)
    y = after[1]
    forgotten = torch.as_tensor(sorted({c for t in tasks for c in t["forget"]}))
    return {"test_drift_by_group": [round(float(move[torch.isin(y, torch.as_tensor(t["forget"]))].mean()), 3)
                                    for t in tasks],
            "test_drift_remain": round(float(move[~torch.isin(y, forgotten)].mean()), 3)}


def after_each_task(run: str, original_path: Path, upto: int):
    """(tasks done, model): the original (a fresh copy: merging changes it in place), then after each of the first
    ``upto`` tasks, the run's stored adapter of that task merged in turn."""
    from peft import PeftModel

    from gslora.audit import _load_model

    model, _ = _load_model(original_path, "original")
    yield 0, model
    for done in range(1, upto + 1):
        model = PeftModel.from_pretrained(model, str(Path(run) / "adapters" / f"task{done}")).merge_and_unload()
        yield done, model


def erosion(run: str, original_path: Path, data, tasks: list[dict], retrained=None) -> list[dict]:
    """The original (after_task 0), the model after each task and the retrained model (after_task None), each
    :func:`by_group`, with the :func:`drift` each task caused."""
    rows, last = [], None
    for done, model in after_each_task(run, original_path, len(tasks)):
        numbers, now = by_group(model, data, tasks)
        rows.append({"after_task": done, **numbers, **(drift(last, now, tasks) if last is not None else {})})
        last = now
        print(rows[-1], flush=True)
    if retrained is not None:
        rows.append({"after_task": None, **by_group(retrained, data, tasks)[0]})
        print(rows[-1], flush=True)
    return rows


def retention_drift(run: str, original_path: Path, data, tasks: list[dict]) -> list[dict]:
    """Per task, for the classes it keeps: how far it moved the L2-normalised embeddings of their replay images (what
    the anchor holds) and of their test images (what Acc_r reads), and their accuracy (unmasked argmax over every
    class) on both before and after the task: whether the anchor's hold on the replay images reaches the test
    images."""
    from torch.utils.data import Subset

    from gslora.audit import embed_dataset

    def embed_and_predict(model, dataset):
        e, y = embed_dataset(model, dataset, "cpu")
        with torch.no_grad():
            return F.normalize(e, dim=-1), model.head(e).argmax(-1), y

    rows, last = [], None
    for done, model in after_each_task(run, original_path, len(tasks)):
        now = {"test": embed_and_predict(model, data.test)}
        if done < len(tasks):  # the replay images of the next task (its remaining classes), before it
            now["replay_next"] = embed_and_predict(model, Subset(data.train, tasks[done]["indices"]["replay"]))
        if last is not None:
            t = tasks[done - 1]
            keep = torch.as_tensor(t["remain"])
            after_replay = embed_and_predict(model, Subset(data.train, t["indices"]["replay"]))
            row = {"task": done}
            for name, before, after in (("replay", last["replay_next"], after_replay), ("test", last["test"],
                                                                                        now["test"])):
                m = torch.isin(after[2], keep)
                row[f"{name}_drift"] = round(float((after[0][m] - before[0][m]).norm(dim=-1).mean()), 3)
                row[f"{name}_acc_before"] = round(100.0 * float((before[1][m] == before[2][m]).double().mean()), 1)
                row[f"{name}_acc_after"] = round(100.0 * float((after[1][m] == after[2][m]).double().mean()), 1)
            rows.append(row)
            print(row, flush=True)
        last = now
    return rows


def adapter_cosines(run: str, n_tasks: int) -> dict:
    """Per LoRA layer, the cosine between the weight updates (scaling · B · A) of every two tasks that changed it:
    whether a later task's update undoes an earlier one's."""
    from safetensors.torch import load_file

    updates = []
    for t in range(1, n_tasks + 1):
        folder = Path(run) / "adapters" / f"task{t}"
        w = load_file(str(folder / "adapter_model.safetensors"))
        cfg = json.loads((folder / "adapter_config.json").read_text())
        scale = cfg["lora_alpha"] / cfg["r"]
        updates.append({k.split("backbone.")[-1].replace(".lora_A.weight", ""):
                        scale * (w[k.replace("lora_A", "lora_B")] @ w[k]).flatten() for k in w if "lora_A" in k})
    out = {}
    for layer in sorted({k for u in updates for k in u}):
        out[layer] = {f"{i + 1}-{j + 1}": round(float(F.cosine_similarity(updates[i][layer], updates[j][layer], 0)), 3)
                      for i in range(n_tasks) for j in range(i + 1, n_tasks)
                      if layer in updates[i] and layer in updates[j]}
    return out


def block_probes(model, data, task: dict) -> dict[str, list[float]]:
    """The in-loop probe of ``task``'s forgotten classes on its check images, read at the output of every block from
    the class token (the path to the embedding, which is the last block's class token after the final norm) and
    from the mean of all tokens, and at the embedding: where in the network the forgotten people are still told
    apart."""
    from torch.utils.data import ConcatDataset, DataLoader, Subset

    from gslora.depth import probe_accuracy

    model.eval()
    blocks = model.backbone.blocks
    captured: list = []
    hooks = [b.register_forward_hook(lambda m, i, o: captured.append(o.float())) for b in blocks]
    images = ConcatDataset([data.val, Subset(data.train, task["indices"]["check_train"])])
    cls, mean_, embs, ys = [], [], [], []
    try:
        with torch.no_grad():
            for x, y in DataLoader(images, batch_size=256):
                captured.clear()
                embs.append(model.embed(x).float())
                cls.append(torch.stack([o[:, 0] for o in captured]))  # blocks × batch × dim
                mean_.append(torch.stack([o.mean(1) for o in captured]))
                ys.append(torch.as_tensor(y))
    finally:
        for h in hooks:
            h.remove()
    y = torch.cat(ys)
    keep = torch.isin(y, task_classes(task))

    def read(feats):
        return [round(probe_accuracy(f[keep], y[keep], task["forget"])["acc"], 1) for f in feats]

    return {"class_token": read(torch.cat(cls, dim=1)), "token_mean": read(torch.cat(mean_, dim=1)),
            "embedding": read([torch.cat(embs)])[0]}


def main() -> None:
    from gslora.audit import _load_model, embed_dataset, run_classes
    from gslora.data import load_data
    from gslora.rundir import RunFolder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--head", help="the head-forgetting run on the same plan")
    p.add_argument("--key", help="key in the JSON (default: the run folder's name)")
    p.add_argument("--erosion", action="store_true", help="also the depth of each task's classes after every task")
    p.add_argument("--retention", action="store_true", help="also, per task, the drift and accuracy of the kept "
                   "classes' replay images against their test images")
    p.add_argument("--blocks", action="store_true", help="also task 1's classes read at every block's output, under "
                   "the original, the model after tasks 1 and 2 and the retrained model")
    a = p.parse_args()
    finished = RunFolder.load(a.run)
    results, rcfg = finished.results, finished.config
    report = json.loads((Path(a.run) / "audit" / "audit.json").read_text())
    paths = {"original": Path(results["source_checkpoint"]), "forgotten": finished.final_checkpoint}
    if a.head:
        paths["head"] = Path(a.head) / "final.safetensors"
    cache = (report.get("retrained_by") or {}).get("cache") or report.get("retrained_checkpoint")
    if cache:
        paths["retrained"] = Path(cache)
    forget, _ = run_classes(results)
    rows, models = {}, {}
    data = None
    for label, path in paths.items():
        model, _ = _load_model(path, label)
        models[label] = model
        model.config.pop("masked_classes", None)
        if data is None:
            data = load_data(rcfg.data, image_size=model.image_size, seed=rcfg.seed, split_ratio=rcfg.split_ratio,
                             val_ratio=rcfg.val_ratio, preprocessing=model.config.get("preprocessing"))
        tr = embed_dataset(model.eval(), data.train, "cpu")
        te = embed_dataset(model, data.test, "cpu")
        rows[label] = {k: (round(v, 4) if v is not None else None) for k, v in readouts(*tr, *te, forget).items()}
        print(label, rows[label], flush=True)
    key = a.key or Path(a.run).name
    saved = json.loads(OUT.read_text()) if OUT.is_file() else {}
    saved[key] = {"run": a.run, "forgotten_classes": len(forget), "models": rows}
    tasks = results["plan"]["tasks"]
    retrained = models.get("retrained")
    if a.erosion:
        saved[key]["erosion"] = erosion(a.run, paths["original"], data, tasks, retrained)
        saved[key]["adapter_cosines"] = adapter_cosines(a.run, len(tasks))
    if a.retention:
        saved[key]["retention"] = retention_drift(a.run, paths["original"], data, tasks)
    if a.blocks:
        rows = {"original" if done == 0 else f"after task {done}": block_probes(model, data, tasks[0])
                for done, model in after_each_task(a.run, paths["original"], 2)}
        if retrained is not None:
            rows["retrained"] = block_probes(retrained, data, tasks[0])
        for label, values in rows.items():
            print(label, values, flush=True)
        saved[key]["task1_by_block"] = rows
    OUT.write_text(json.dumps(saved, indent=1) + "\n")


if __name__ == "__main__":
    main()
