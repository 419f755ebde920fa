"""The erasure record: what was done to a model, one entry per forgetting request, oldest first.

The record travels with the model in every format gslora writes (the checkpoint sidecar's ``record``, the Hugging Face
``config.json`` field ``gslora.record``, and ``gslora.json`` beside timm and torchvision state dicts). It is
append-only and hash-chained:

- every entry holds the SHA-256 of the weights before and after its request (:func:`weights_sha256`), so the weights
  a later entry starts from must be the ones the entry before it ended at;
- every entry holds the SHA-256 of the entry before it (``previous``) and of itself (``entry_sha256``, over all its
  other fields), so editing any entry breaks the chain at that entry or the next.

:func:`verify` checks both against a model's weights. The hashes make changes evident, they do not sign: someone who
rewrites the weights *and* recomputes every hash after them is not caught (keep a copy of the last entry's hash, or
sign the file, where that matters).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Iterable

import torch

from ._version import __version__

MASK_LOGIT = -1.0e4  # the logit a masked (forgotten) class gets in a deployed model: it is never the top-1 output
RECORD_VERSION = 1


# ---------------------------------------------------------------------------------------------------------------------
# Hashes


def weights_sha256(model: torch.nn.Module, masked: Iterable[int] | None = None) -> str:
    """SHA-256 of the model as deployed: every tensor of its state dict (sorted by name; name, dtype, shape and raw
    bytes), with the head rows of the ``masked`` classes (default: the model's own ``config["masked_classes"]``) put in
    their masked form (weight 0, bias :data:`MASK_LOGIT`), and the masked class list.

    A model whose masked rows are baked into its weights (a Hugging Face / timm / torchvision export) and the same
    model with the mask kept aside (a gslora checkpoint) therefore hash alike: the hash names one deployed model
    whatever format carries it."""
    if masked is None:
        masked = (getattr(model, "config", None) or {}).get("masked_classes") or []
    rows = sorted({int(c) for c in masked})
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu")
        if rows and name in ("head.weight", "head.bias"):
            tensor = tensor.clone()
            tensor[rows] = 0.0 if name == "head.weight" else MASK_LOGIT
        tensor = tensor.contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    digest.update(("masked:" + json.dumps(rows)).encode())
    return digest.hexdigest()


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def entry_sha256(entry: dict) -> str:
    """SHA-256 of an entry's canonical JSON, its own ``entry_sha256`` field left out."""
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "entry_sha256"}).encode()).hexdigest()


def json_safe(value):
    """``value`` with NaN / infinite floats as None and tuples as lists (the record is strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------------------
# Entries


def new_request_prefix() -> str:
    """A request id prefix for a run: UTC time and a random suffix (``20261205T071530Z-3fa9c2``)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def append_entry(record: list[dict], fields: dict) -> list[dict]:
    """A new record: ``record`` plus one entry made of ``fields``, chained to the last entry."""
    entry = json_safe({"record_version": RECORD_VERSION, "gslora_version": __version__,
                       "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields})
    entry["previous"] = record[-1]["entry_sha256"] if record else None
    entry["entry_sha256"] = entry_sha256(entry)
    return [*record, entry]


def forgotten_names(record: list[dict] | None, history: list[dict] | None = None) -> list[str]:
    """Every class a model's record (and its older ``history`` list) names as forgotten, once each, oldest first."""
    names = [c["name"] for e in record or [] for c in e.get("classes", [])]
    names += [c for h in history or [] for c in h.get("forgotten", [])]
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------------------------------
# Verification


def verify(record: list[dict] | None, weights_hash: str) -> tuple[bool, str]:
    """(ok, one sentence): the chain of ``record`` is intact, each entry starts from the weights the one before it
    ended at, and ``weights_hash`` (:func:`weights_sha256` of the model at hand) is the last entry's."""
    if not record:
        return False, "the model has no erasure record (no forgetting request was recorded with it)."
    for i, entry in enumerate(record, start=1):
        name = f"entry {i} ({entry.get('request', '?')})"
        own = entry_sha256(entry)
        if entry.get("entry_sha256") != own:
            return False, (f"{name} was changed after it was written: its contents hash to {own[:16]}..., not the "
                           f"{str(entry.get('entry_sha256'))[:16]}... it records; the chain is broken at entry {i}.")
        if i == 1:
            if entry.get("previous") is not None:
                return False, f"{name} names a previous entry, but it is the first; entries before it were removed."
            continue
        before = record[i - 2]
        if entry.get("previous") != before.get("entry_sha256"):
            return False, (f"{name} does not follow entry {i - 1}: it names the previous entry "
                           f"{str(entry.get('previous'))[:16]}..., but entry {i - 1} hashes to "
                           f"{str(before.get('entry_sha256'))[:16]}...; the chain is broken at entry {i}.")
        if entry.get("weights_before") != before.get("weights_after"):
            return False, (f"{name} starts from weights {str(entry.get('weights_before'))[:16]}..., but entry {i - 1} "
                           f"ended at {str(before.get('weights_after'))[:16]}...; the model was changed between the "
                           "two requests outside the record.")
    last = record[-1]
    if last.get("weights_after") != weights_hash:
        return False, (f"the weights hash to {weights_hash[:16]}..., but the last entry ({len(record)}, "
                       f"{last.get('request', '?')}) records {str(last.get('weights_after'))[:16]}...; the weights "
                       "were changed after the last recorded request.")
    return True, (f"the record's {len(record)} entries chain correctly and the weights ({weights_hash[:16]}...) are "
                  "the ones its last entry describes.")


# ---------------------------------------------------------------------------------------------------------------------
# Reading it


def _classes_text(entry: dict, limit: int = 4) -> str:
    names = [c["name"] for c in entry.get("classes", [])]
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _num(value, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _met_text(met: dict | None) -> str:
    if not met:
        return "-"
    return "all met" if all(met.values()) else "missed " + ", ".join(k for k, v in met.items() if not v)


def _certified_text(entry: dict) -> str:
    value = entry.get("certified")
    return "not audited" if value is None else ("yes" if value else "NO")


def history_rows(record: list[dict]) -> list[dict]:
    """One flat row per entry, oldest first: what ``gslora history`` prints."""
    rows = []
    for i, e in enumerate(record, start=1):
        targets = e.get("targets") or {}
        audit = e.get("audit") or {}
        rows.append({
            "#": str(i), "request": e.get("request", "-"), "time": e.get("time", "-"),
            "classes": _classes_text(e), "method": e.get("method", "-"),
            "blocks": "-" if e.get("blocks_changed") is None else (",".join(map(str, e["blocks_changed"])) or "none"),
            "trainable %": _num(e.get("trainable_share"), "{:.2f}"),
            "targets (check / test)": f"{_met_text(targets.get('check'))} / {_met_text(targets.get('test'))}",
            "probe Acc_f": (f"{_num(audit.get('probe_f_before'))} -> {_num(audit.get('probe_f'))}" if audit else "-"),
            "recovery %": _num(audit.get("recovery")) if audit else "-",
            "certified": _certified_text(e),
            "masked": "yes" if e.get("masked") else "no",
            "steps": str(e.get("steps", "-")), "seconds": _num(e.get("wall_seconds"), "{:.0f}"),
            "weights after": str(e.get("weights_after", ""))[:12],
        })
    return rows


def history_table(record: list[dict]) -> str:
    """The record as a plain-text table, oldest first."""
    rows = history_rows(record)
    if not rows:
        return "no erasure record: no forgetting request was recorded with this model."
    cols = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    line = "  ".join(c.ljust(width[c]) for c in cols)
    return "\n".join([line, "  ".join("-" * width[c] for c in cols),
                      *("  ".join(r[c].ljust(width[c]) for c in cols) for r in rows)])


def record_markdown(record: list[dict], model: str = "the model") -> str:
    """One page a non-engineer can read: what was erased, when, how, whether it was checked, and the hashes."""
    out = [f"# Erasure record of {model}", ""]
    if not record:
        return "\n".join(out + ["No forgetting request was recorded with this model.", ""])
    out += [f"{len(record)} forgetting request(s), oldest first. Each entry is chained to the one before it by a "
            "SHA-256 hash; `gslora verify MODEL` checks the chain and that the model's weights are the ones the last "
            "entry describes.", ""]
    for i, e in enumerate(record, start=1):
        names = [c["name"] for c in e.get("classes", [])]
        targets = e.get("targets") or {}
        audit = e.get("audit")
        out += [f"## {i}. Request {e.get('request', '-')}", "",
                f"- **Erased** ({len(names)}): {', '.join(names)}",
                f"- **When**: {e.get('time', '-')}, with gslora {e.get('gslora_version', '-')}",
                f"- **How**: method `{e.get('method', '-')}`; blocks changed: "
                f"{'-' if e.get('blocks_changed') is None else (e['blocks_changed'] or 'none')}; trainable share "
                f"{_num(e.get('trainable_share'), '{:.2f}')}% of the parameters; {e.get('steps', '-')} training steps "
                f"in {_num(e.get('wall_seconds'), '{:.0f}')} s",
                f"- **Settings that differ from the defaults**: "
                f"{', '.join(f'`{k}={v}`' for k, v in (e.get('settings') or {}).items()) or 'none'}",
                f"- **Targets** `{targets.get('spec', '')}`: on the check set {_met_text(targets.get('check'))}; "
                f"on the test set {_met_text(targets.get('test'))}",
                "- **Deployed outputs**: " + ("the erased classes are masked (never predicted)" if e.get("masked")
                                              else "not masked")]
        if audit:
            out.append(
                f"- **Depth check** (images the run did not train on): linear probe reads the erased classes at "
                f"{_num(audit.get('probe_f'))}% (before the request {_num(audit.get('probe_f_before'))}%); retraining "
                f"the head brings back {_num(audit.get('recovery'))}% of their accuracy; targets "
                f"`{audit.get('target', '')}`: {_met_text(audit.get('met'))}")
        out += [f"- **Certified**: {_certified_text(e)}",
                f"- **Weights**: before `{e.get('weights_before', '-')}`, after `{e.get('weights_after', '-')}`",
                f"- **Entry hash** `{e.get('entry_sha256', '-')}` (previous `{e.get('previous') or 'none'}`)", ""]
    return "\n".join(out)
