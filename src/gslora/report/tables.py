"""Tables (Markdown, CSV) from a run's results dict. Pure formatting: nothing here trains, evaluates or writes."""

from __future__ import annotations

import csv
import io


def fmt(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def has_missing(rows: list[dict]) -> bool:
    """Whether the run had missing classes (:mod:`gslora.practical`): then tables show Acc_m next to Acc_r."""
    return any(r.get("n_missing") for r in rows)


def names_text(names: list[str], limit: int = 4) -> str:
    """Class names, shortened past ``limit``: ``a, b, c, d (+16 more)``."""
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def target_results(row: dict) -> list[tuple[str, float, float | None, bool]]:
    """Per target of the task: (metric, bound, value reached on the check set, met on the check set)."""
    from ..config import parse_target

    spec = (row.get("targets") or {}).get("spec") or ""
    met = (row.get("targets") or {}).get("val") or {}
    reached = row.get("check") or row.get("val") or {}
    return [(k, bound, reached.get(k), bool(met.get(k, True))) for k, bound in parse_target(spec).items()]


def task_line(row: dict, num_tasks: int) -> str:
    """One line saying what a task did: the classes forgotten, the trials and their lr (and retention anchor, when a
    trial strengthened it), each target on the check set (met or missed, with the value reached), the blocks changed,
    the test numbers (with the probe of the earlier-forgotten classes after and before the task, when there are any)
    and the time."""
    trials = row.get("trials") or []
    lrs = ", ".join(f"{t['lr']:.3g}" + (f" anchor x{t['anchor_scale']:g}" if t.get("anchor_scale", 1.0) != 1.0 else "")
                    for t in trials)
    chosen = f", kept {row.get('chosen_trial')}" if len(trials) > 1 else ""
    trial_text = f"{len(trials)} trial{'s' if len(trials) != 1 else ''} (lr {lrs}{chosen})" if trials else "no trial"
    targets = "; ".join(f"{k} {fmt(v)} {'met' if ok else 'MISSED'} (≤ {bound:g})" for k, bound, v, ok
                        in target_results(row)) or "no target"
    info = row.get("method_info") or {}
    blocks = info.get("selected_blocks")
    blocks_text = "" if blocks is None else f" | blocks changed: {','.join(map(str, blocks)) or 'none'}"
    earlier = ("" if row.get("probe_o") is None else
               f", earlier-forgotten {fmt(row['probe_o'])} (was {fmt(row.get('probe_o_before'))})")
    return (f"task {row['task']}/{num_tasks}: forgot {names_text(row['forget'])} | {trial_text} | check set: "
            f"{targets}{blocks_text} | Acc_f {fmt(row['acc_f'])} Acc_r {fmt(row['acc_r'])} probe_f "
            f"{fmt(row.get('probe_f'))}{earlier} (test) | "
            f"{row['wall_seconds']:.0f} s")


def task_warnings(row: dict) -> list[str]:
    """A sentence per target the task missed on its check set, with the value it reached."""
    return [f"task {row['task']} missed its target {k} ≤ {bound:g} on the check set: it reached {fmt(v)} "
            f"(after {len(row.get('trials') or [])} trial(s); the best one was kept)"
            for k, bound, v, ok in target_results(row) if not ok]


def paper_table(results: dict, label: str | None = None) -> str:
    """The paper's Table 3 layout: a Pre-train row and a method row; per task H, Acc_r (Acc_m with missing classes),
    Acc_f (Acc_o from task 2)."""
    rows = results["tasks"]
    miss = has_missing(rows)
    header, sub, pre, ours = ["Method"], [""], ["Pre-train"], [label or results["method"]["method"]]
    for r in rows:
        m = r.get("n_missing", 0) > 0
        cols = ["H ↑", "Acc_r ↑"] + (["Acc_m ↑"] if m else []) + ["Acc_f ↓"] + (["Acc_o ↓"] if r["task"] > 1 else [])
        header += [f"T{r['task']} {r['setting']}"] + [""] * (len(cols) - 1)
        sub += cols
        pre += (["-", fmt(r["pretrained"]["acc_r"])] + ([fmt(r["pretrained"].get("acc_m"))] if m else [])
                + [fmt(r["pretrained"]["acc_f"])] + (["-"] if r["task"] > 1 else []))
        ours += ([fmt(r["h_mean"]), fmt(r["acc_r"])] + ([fmt(r.get("acc_m"))] if m else []) + [fmt(r["acc_f"])]
                 + ([fmt(r["acc_o"])] if r["task"] > 1 else []))
    table = markdown([header, sub, pre, ours])
    if miss:
        table += ("\n\nAcc_m: the missing classes (remaining, but without any replay data); Acc_r: the remaining "
                  "classes that keep their replay data.")
    return table


def task_table(results: dict) -> str:
    """One row per task: the numbers the paper omits (drop, change of Acc_r, blocks touched, time)."""
    miss = has_missing(results["tasks"])
    lines = [["Task", "Setting", "Acc_f before", "Acc_f", "probe_f", "probe kept", "Drop", "Acc_r",
              "ΔAcc_r vs pre-train"]
             + (["Acc_m", "Acc_m before"] if miss else [])
             + ["Acc_o", "probe_o (before)", "H", "Tunable", "Blocks selected", "Time (s)"]]
    for r in results["tasks"]:
        info = r.get("method_info", {})
        sel = info.get("selected_blocks")
        m = [fmt(r.get("acc_m")), fmt(r["before"].get("acc_m"))] if miss else []
        lines.append([
            str(r["task"]), r["setting"], fmt(r["before"]["acc_f"]), fmt(r["acc_f"]), fmt(r.get("probe_f")),
            "-" if r.get("probe_keep") is None else f"{r['probe_keep']:.0f}%", fmt(r["drop"]), fmt(r["acc_r"]),
            fmt(r["acc_r_change_vs_pretrained"]), *m, fmt(r["acc_o"]),
            "-" if r.get("probe_o") is None else f"{fmt(r['probe_o'])} ({fmt(r.get('probe_o_before'))})",
            fmt(r["h_mean"]), f"{r['tunable_ratio']:.2f}%",
            "-" if sel is None else f"{len(sel)}/{len(info['group_norms'])} {sel}", f"{r['wall_seconds']:.1f}",
        ])
    return markdown(lines)


def markdown(rows: list[list[str]]) -> str:
    """A Markdown table from rows of cells (the first row is the header); columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    out = [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows[1:]]
    return "\n".join(out)


CSV_FIELDS = ["task", "setting", "n_forget", "n_remain", "n_old", "n_missing", "acc_f", "probe_f", "probe_keep",
              "check_probe_f", "check_probe_keep", "probe_o_before", "probe_o", "acc_r", "acc_m", "acc_o",
              "drop", "h_mean", "acc_f_before", "acc_r_pretrained", "acc_m_before", "acc_m_pretrained",
              "acc_r_change_vs_pretrained", "val_acc_f", "val_acc_r", "val_acc_m", "val_acc_o", "val_h_mean",
              "tunable_ratio", "trainable_params", "selected_blocks", "group_norms", "relative_delta_norms",
              "replay_images", "forget_images", "steps", "train_seconds", "wall_seconds", "missing_check_acc",
              "missing_check_change", "deployed_acc_f", "deployed_acc_r", "deployed_acc_o", "gate_probe_f_before",
              "gate_probe_f", "gate_recovery", "certified", "request"]


def results_csv(results: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in results["tasks"]:
        flat = dict(r)
        flat["acc_f_before"] = r["before"]["acc_f"]
        flat["acc_r_pretrained"] = r["pretrained"]["acc_r"]
        flat["acc_m_before"] = r["before"].get("acc_m")
        flat["acc_m_pretrained"] = r["pretrained"].get("acc_m")
        for k in ("acc_f", "acc_r", "acc_m", "acc_o", "h_mean"):
            flat[f"val_{k}"] = r["val"].get(k)
        for k in ("probe_f", "probe_keep"):
            flat[f"check_{k}"] = (r.get("check") or {}).get(k)
        for k in ("selected_blocks", "group_norms", "relative_delta_norms"):
            if k in r.get("method_info", {}):
                flat[k] = " ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r["method_info"][k])
        if r.get("missing_check"):
            flat["missing_check_acc"] = r["missing_check"]["acc"]
            flat["missing_check_change"] = r["missing_check"].get("change")
        for k in ("acc_f", "acc_r", "acc_o"):
            flat[f"deployed_{k}"] = (r.get("deployed") or {}).get(k)
        gate = r.get("audit") or {}
        flat.update(gate_probe_f_before=gate.get("probe_f_before"), gate_probe_f=gate.get("probe_f"),
                    gate_recovery=gate.get("recovery"), certified=gate.get("certified"))
        flat["request"] = _request_of(results, r["task"])
        w.writerow(flat)
    return buf.getvalue()


def results_markdown(results: dict) -> str:
    m = results["model"]
    parts = [
        f"# Forgetting run: {results['method']['method']} on {results['data']['name']}",
        "",
        f"Model `{m['arch']}` ({m['parameters']:,} parameters, {m['num_classes']} classes), "
        f"device {results['device']}, "
        f"gslora {results['gslora_version']}, total {results['wall_seconds']:.1f} s. Accuracies in %, test split, "
        "top-1 over all classes; Drop is measured against the model at the start of each task.",
        "",
        paper_table(results),
        "",
        task_table(results),
        "",
        "What each task did (targets scored on the task's check set: validation images and training images outside "
        "its subsets; `acc_r_drop` counts as met within one check image of the bound):",
        "",
        *[f"- {task_line(r, len(results['tasks']))}" for r in results["tasks"]],
        *[f"- **Warning**: {w}" for r in results["tasks"] for w in task_warnings(r)],
        *[f"- **Warning**: {w}" for w in results.get("warnings") or []],
        "",
        "Validation split (carved from training data; use it, not the test split, for any model selection):",
        "",
        markdown([["Task", "Acc_f", "Acc_r", "Acc_m", "Acc_o", "H"]] + [
            [str(r["task"]), fmt(r["val"]["acc_f"]), fmt(r["val"]["acc_r"]), fmt(r["val"].get("acc_m")),
             fmt(r["val"]["acc_o"]), fmt(r["val"]["h_mean"])] for r in results["tasks"]]),
        "",
    ]
    missing = missing_check_section(results)
    if missing:
        parts += [missing, ""]
    parts += [record_section(results), ""]
    return "\n".join(parts)


def _request_of(results: dict, task: int) -> str | None:
    """The record entry id of a task of this run (the last entries of the record are this run's tasks)."""
    record, n = results.get("record") or [], len(results["tasks"])
    mine = record[-n:] if len(record) >= n else []
    return next((e.get("request") for e in mine if e.get("task") == task), None)


def record_section(results: dict) -> str:
    """The model as deployed (forgotten classes masked) next to the paper's unmasked metrics, the depth gate's
    figures when it ran, and the record entries this run appended."""
    rows = results["tasks"]
    gate = any(r.get("audit") for r in rows)
    masked = results.get("masked_classes") or []
    head = ["Task", "Request", "Acc_f (paper)", "Acc_o (paper)", "Acc_r deployed", "Acc_f deployed", "Acc_o deployed"]
    if gate:
        head += ["Probe Acc_f before → after", "Recovery %", "Certified"]
    lines = [head]
    for r in rows:
        d, g = r.get("deployed") or {}, r.get("audit") or {}
        line = [str(r["task"]), _request_of(results, r["task"]) or "-", fmt(r["acc_f"]), fmt(r["acc_o"]),
                fmt(d.get("acc_r")), fmt(d.get("acc_f")), fmt(d.get("acc_o"))]
        if gate:
            line += [f"{fmt(g.get('probe_f_before'))} → {fmt(g.get('probe_f'))}", fmt(g.get("recovery"), 0),
                     {True: "yes", False: "NO", None: "-"}[g.get("certified")]]
        lines.append(line)
    what = (f"The finished model masks the outputs of the {len(masked)} forgotten classes (never predicted), in every "
            "format it is written in; \"deployed\" columns score it so. The paper's columns score it unmasked."
            if masked else "The finished model does not mask the forgotten classes' outputs (mask_outputs false).")
    return "\n".join(["## The model as deployed, and its erasure record", "", what, "", markdown(lines), "",
                      f"The record ({len(results.get('record') or [])} entries, this run's last) is in `record.md`, in "
                      "the final model's sidecar and in every export; `gslora verify final.safetensors` checks it."])


def missing_check_section(results: dict) -> str:
    """The missing-class check (``--head-subset`` models): a table before the first task and after each task, or
    the reason it was skipped; empty for models whose head was not cut (the check does not apply)."""
    check = results.get("missing_check")
    if not check or (check.get("skipped") and not results["model"].get("head_subset")):
        return ""
    if check.get("skipped"):
        return f"Missing-class check: skipped ({check['skipped']})."
    lines = [["Model", "Acc (missing classes, full head)", "Change"],
             ["before task 1", fmt(check["before"]["acc"]), "-"]]
    lines += [[f"after task {r['task']}", fmt(r["missing_check"]["acc"]), fmt(r["missing_check"].get("change"))]
              for r in results["tasks"] if r.get("missing_check")]
    return "\n".join([
        f"Missing-class check: {check['images']} images of {check['classes']} classes outside the head subset "
        f"(from `{check['folder']}`), scored with the original {check['head_classes']}-way head on the current "
        "backbone; top-1 accuracy in % among all the original classes.", "", markdown(lines)])
