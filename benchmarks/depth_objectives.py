"""Forgetting objectives that act on the features, side by side, each audited against a model retrained without the
forgotten classes and against head masking.

For each dataset: `gslora pretrain` with defaults (cached in --out), then on one seeded NxK plan:

    head         the `head` method (head fine-tuned, backbone frozen): the trivial baseline
    defaults     GS-LoRA as shipped (its loss, its targets)
    paper-ce     the paper's bounded CE at its full budget, blocks free: forget_loss ce, the group lasso as a penalty
                 (alpha 1e-4), no early stop (eval_every 0)
    attack       GS-LoRA + the attack in the loop (ridge_attack_loss below, weight W)
    collapse     GS-LoRA + class-mean collapse: W x the between-class share of the forgotten embeddings'
                 variance (eta^2) on the forget batch (LEACE: equal class-conditional means leave a linear
                 read-out nothing)
    rmu          GS-LoRA + representation misdirection (RMU) at the middle block's FFN output: forget activations pushed
                 to c x a fixed random direction (c: the original's mean activation norm there), remain activations held
                 at the original's
    layers       GS-LoRA + the collapse also on the token mean of the block outputs from the middle block on
    layerscls    the same on their class token (the path to the embedding: where the forgotten stay readable)
    layerscls2   the embedding's collapse at full weight plus the mean of those class-token collapses, same weight
    layersclshold  layerscls2, and the replay batch's class tokens at those blocks held where the task started (the
                 embedding anchor's form and weight)
    layersclshalf  layersclshold with the middle blocks' collapse at half the weight
    lastonly     GS-LoRA with only the last block's adapter trained from task 2 on (the converse diagnostic)
    keeplast     GS-LoRA with the last block's adapter held at zero from task 2 on (a diagnostic of the erosion)
    fc2only      GS-LoRA with LoRA on each FFN's output projection only (fc1's adapter held at zero)
    layershold   the product's loss and the replay batch's middle-block class tokens held where the task started
                 (layersclshold without the middle blocks' collapse): less drift above the last block, so that an
                 earlier task's cancellation there may hold
    holdstrangers  layersclshold and the embedding anchor also on strangers (as in `strangers`)
    marginhold   GS-LoRA + the replay images' margins (own class's logit against the best other's) held at the
                 task-start model's: weight x mean max(0, m0 - m)
    projected    GS-LoRA with every LoRA A kept out of the input directions holding W % (--weight) of the replay
                 images' energy at that layer (orthogonal-subspace continual learning)
    firstmiddle  each task's first trial layersclshold with β x2, the later trials (after a missed target) GS-LoRA as
                 shipped (the JSON's `defaults-mid` entries ran this rule as a product option, `--set
                 method_args.middle_blocks=true` at commit 392460e, reverted)
    droppath     GS-LoRA trained under stochastic depth (rate W / 100): the forgetting must hold with any block skipped
    oldapart     with --set old_forget_shots=2: the collapse of this task's classes and of the earlier-forgotten ones
                 apart (the product's term takes them together)
    oldanchor    with --set old_forget_shots=2: the earlier-forgotten images held by the embedding anchor where the
                 task started (not collapsed with this task's classes)
    strangers    the embedding anchor also on mixes of two remaining people's replay images (a pixel mix, 0.3-0.7):
                 synthetic people outside the task, whom the update may not move either (no data of the forgotten)
    earlierout   GS-LoRA with every LoRA A kept out of the input directions the earlier tasks' merged updates read in
                 that layer (99% of each update's energy; --weight): a later task cannot feed back what they read
    normhold     GS-LoRA as shipped, and the forget batch's class token entering the final norm kept at least as long
                 as the replay batch's (centred norm; weight W x the squared shortfall of the ratio)
    robust       the collapse also on the forget batch under a random rank-8 change of two blocks' FFN weights (20%
                 of their norm, what a later task does), so that it holds when a later task changes those blocks

Every variant but paper-ce runs through the same targets and trial rule, with the probe target --probe (the in-loop
probe, gslora.depth) added to the forgetting targets (the `defaults` row keeps the shipped target unless --probe-all).
After the last task every run is audited (`gslora.audit.audit_run`, retrain-full reference cached, head run compared):
probe Acc_f, recovery at epoch 20 (% of the original), MIA AUC, and their distance to the retrained model. The
calibration of probe_keep: the in-loop probe of the original and of the retrained model, fitted on every class's
validation + test images (neither model trained on them), scored on each task's forgotten classes.

    .venv/bin/python benchmarks/depth_objectives.py --only orl-4x5
    .venv/bin/python benchmarks/depth_objectives.py --only gt-4x10 --variants defaults,attack
    .venv/bin/python benchmarks/depth_objectives.py --only gt-4x10 --record-run RUN --label old2 \
        --set old_forget_shots=2      # a CLI run (`gslora forget ... --set ...`, then `gslora audit`) recorded

Raw numbers: docs/results/depth_objectives.json (merged per dataset and variant).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
sys.path.insert(0, str(HERE))
RUNS = {  # name: (data, tasks)
    "faces-4x20": ("faces", "4x20"),
    "orl-4x5": (str(SHARED / "orl-faces"), "4x5"),
    "gt-4x10": (str(SHARED / "gt-faces"), "4x10"),
    "omniglot-4x20": (str(SHARED / "omniglot-small"), "4x20"),
}


# ---------------------------------------------------------------------------------------------------------------------
# The objectives measured and not adopted (GS-LoRA subclasses; the adopted one lives in gslora.methods.gslora)

def ridge_attack_loss(emb, y, alpha=None, margin: float = 0.0):
    """The attack in the loop (TAR-style) on a forget batch: mean over images of max(0, p_y - max_{c!=y} p_c + margin),
    p the leave-one-out ridge prediction of the image from the rest of the batch (+-1 one-vs-all targets, L2-normalised
    embeddings), at the ridge strength the in-loop probe would choose. 0 for a batch with fewer than two classes."""
    from gslora.depth import RIDGE_ALPHAS, _design, _targets, loo_ridge

    if len(y) < 3 or len(torch.unique(y)) < 2:
        return emb.sum() * 0.0
    x = _design(emb)
    _, t = _targets(y.cpu())
    t = t.to(x.device, x.dtype)
    if alpha is None:
        with torch.no_grad():
            alpha = min(RIDGE_ALPHAS, key=lambda a: float(((loo_ridge(x.detach(), t, a) - t) ** 2).mean()))
    pred = loo_ridge(x, t, alpha)
    own = t > 0
    other = pred.masked_fill(own, float("-inf")).max(1).values
    return F.relu(pred[own] - other + margin).mean()


def stranger_anchor(method, model, remain, state, total, logs):
    """``total`` plus the method's embedding anchor on "strangers": pixel mixes (0.3-0.7, seeded by the step) of two
    of the replay batch's images, synthetic people outside the task that the update may not move either."""
    from gslora.methods.gslora import embedding_anchor

    x_r, _ = remain
    if method.anchor <= 0 or len(x_r) < 2:
        return total, logs
    g = torch.Generator().manual_seed(state.step)
    perm = torch.randperm(len(x_r), generator=g).to(x_r.device)
    lam = (0.3 + 0.4 * torch.rand(len(x_r), 1, 1, 1, generator=g)).to(x_r.device, x_r.dtype)
    mixed = lam * x_r + (1 - lam) * x_r[perm]
    held = method.anchor * embedding_anchor(model, mixed, model.embed(mixed))
    logs["strangers"] = float(held.detach())
    return total + held, logs


def make_variants():
    from gslora.methods.gslora import GSLoRA

    class Attack(GSLoRA):
        weight = 10.0

        def feature_term(self, emb_f, y_f, state):
            return self.weight * ridge_attack_loss(emb_f.float(), y_f)

    class Collapse(GSLoRA):  # the product's term (collapse_weight), at the weight given here
        weight = 10.0

        def feature_term(self, emb_f, y_f, state):
            from gslora.depth import collapse_loss

            return self.weight * collapse_loss(emb_f, y_f)

    class RMU(GSLoRA):
        weight = 10.0
        retain_weight = 10.0

        def prepare(self, model, ctx):
            from gslora.models.ffn import locate_ffn

            _, blocks = locate_ffn(model)
            self.layer = blocks[len(blocks) // 2].fc2
            self.original = ctx.original_model
            peft = super().prepare(model, ctx)
            g = torch.Generator().manual_seed(ctx.config.seed + ctx.position)
            self.captured = {}
            self.hooks = [
                peft.base_model.model.get_submodule(self.layer).register_forward_hook(
                    lambda m, i, o: self.captured.__setitem__("now", o)),
                self.original.get_submodule(self.layer).register_forward_hook(
                    lambda m, i, o: self.captured.__setitem__("orig", o))]
            dim = peft.base_model.model.get_submodule(self.layer).out_features
            self.direction = F.normalize(torch.rand(dim, generator=g), dim=0).to(ctx.device)
            self.scale = None
            return peft

        def loss(self, model, remain, forget, state):
            total, logs = super().loss(model, remain, forget, state)
            act = self.captured["now"].float()  # (remain + forget batch, tokens, dim)
            n_r = remain[0].shape[0]
            with torch.no_grad():
                self.original.embed(torch.cat([remain[0], forget[0]]))
                orig = self.captured["orig"].float()
            if self.scale is None:
                self.scale = float(orig.norm(dim=-1).mean())
            rmu_f = ((act[n_r:] - self.scale * self.direction) ** 2).mean()
            rmu_r = ((act[:n_r] - orig[:n_r]) ** 2).mean()
            logs.update(rmu_f=float(rmu_f.detach()), rmu_r=float(rmu_r.detach()))
            return total + self.weight * rmu_f / self.scale ** 2 + self.retain_weight * rmu_r / self.scale ** 2, logs

        def finish(self, model, ctx):
            for hook in self.hooks:
                hook.remove()
            return super().finish(model, ctx)

        def state_dict(self):
            return {}

    class Layers(GSLoRA):  # the product's collapse, also on the token-mean of every block output from the middle on
        weight = 20.0

        @staticmethod
        def pool(o):
            return o.mean(1)

        def prepare(self, model, ctx):
            peft = super().prepare(model, ctx)
            blocks = peft.base_model.model.backbone.blocks
            self.captured = []
            self.hooks = [blocks[i].register_forward_hook(  # training forwards only (not the checks' evaluation)
                lambda m, i, o: self.captured.append(o) if m.training else None)
                for i in range(len(blocks) // 2 - 1, len(blocks) - 1)]
            return peft

        def loss(self, model, remain, forget, state):
            self.captured.clear()
            return super().loss(model, remain, forget, state)

        def feature_term(self, emb_f, y_f, state):
            from gslora.depth import collapse_loss

            n_f = emb_f.shape[0]
            terms = [collapse_loss(self.pool(o[-n_f:].float()), y_f) for o in self.captured]
            self.captured.clear()
            return self.weight * (collapse_loss(emb_f, y_f) + sum(terms)) / (1 + len(terms))

        def finish(self, model, ctx):
            for hook in self.hooks:
                hook.remove()
            return super().finish(model, ctx)

    class LayersClass(Layers):  # the same on the class token (the path to the embedding) of those block outputs
        @staticmethod
        def pool(o):
            return o[:, 0]

    class LayersClassPlus(LayersClass):  # the embedding's collapse at full weight plus the mean of the middle blocks'
        # class-token collapse as a further term of the same weight (x middle_share)
        middle_share = 1.0

        def feature_term(self, emb_f, y_f, state):
            from gslora.depth import collapse_loss

            n_f = emb_f.shape[0]
            terms = [collapse_loss(self.pool(o[-n_f:].float()), y_f) for o in self.captured]
            self.captured.clear()
            return self.weight * (collapse_loss(emb_f, y_f) + self.middle_share * sum(terms) / max(len(terms), 1))

    class LayersClassHold(LayersClassPlus):  # layerscls2 and the remaining classes held at those class tokens too:
        # the replay batch's middle-block class tokens anchored where the task started (the embedding anchor's form and
        # weight, grown by the trials like it), so that the collapse below the embedding costs no retention
        def feature_term(self, emb_f, y_f, state):
            n_f = emb_f.shape[0]
            self.live = [o[:-n_f, 0].float() for o in self.captured]
            return super().feature_term(emb_f, y_f, state)

        def loss(self, model, remain, forget, state):
            total, logs = super().loss(model, remain, forget, state)  # the anchor's forward filled self.captured
            start = [o[:, 0].float() for o in self.captured]
            self.captured.clear()
            if self.anchor > 0 and len(start) == len(self.live):
                held = sum((F.normalize(a, dim=-1) - F.normalize(b.detach(), dim=-1)).pow(2).sum(-1).mean()
                           for a, b in zip(self.live, start)) / max(len(start), 1)
                total = total + self.anchor * held
                logs["hold"] = float(self.anchor * held.detach())
            self.live = []
            return total, logs

    class LayersClassHoldHalf(LayersClassHold):  # layersclshold with the middle blocks' collapse at half the weight
        middle_share = 0.5

    class LayersHold(LayersClassHold):  # layersclshold without the middle blocks' collapse: only their hold
        middle_share = 0.0

    class DropPath(GSLoRA):  # the product's collapse, trained under stochastic depth (a rate of `weight` / 100)
        weight = 20.0

        def prepare(self, model, ctx):
            from timm.layers import DropPath as Drop

            peft = super().prepare(model, ctx)
            self.saved = []
            for block in peft.base_model.model.backbone.blocks:
                self.saved.append((block.drop_path1, block.drop_path2))
                block.drop_path1, block.drop_path2 = Drop(self.weight / 100), Drop(self.weight / 100)
            return peft

        def feature_term(self, emb_f, y_f, state):
            from gslora.depth import collapse_loss

            return self.args.collapse_weight * collapse_loss(emb_f, y_f)

        def finish(self, model, ctx):
            for block, (a, b) in zip(model.base_model.model.backbone.blocks, self.saved):
                block.drop_path1, block.drop_path2 = a, b
            return super().finish(model, ctx)

    class OldApart(GSLoRA):  # with old_forget_shots: η² of this task's classes and of the earlier-forgotten ones apart
        weight = 20.0

        def feature_term(self, emb_f, y_f, state):
            from gslora.depth import collapse_loss

            old = torch.isin(y_f, self.old_classes)
            terms = [collapse_loss(emb_f[m], y_f[m]) for m in (~old, old) if m.any()]
            return self.weight * sum(terms)

    class OldAnchor(GSLoRA):  # with old_forget_shots: the earlier-forgotten images held where they are (the
        # embedding anchor) instead of collapsed with this task's classes
        weight = 20.0

        def feature_term(self, emb_f, y_f, state):
            from gslora.depth import collapse_loss

            now = ~torch.isin(y_f, self.old_classes)
            return self.weight * collapse_loss(emb_f[now], y_f[now]) if now.any() else None

        def loss(self, model, remain, forget, state):
            from gslora.methods.gslora import embedding_anchor

            total, logs = super().loss(model, remain, forget, state)
            x_f, y_f = forget
            old = torch.isin(y_f, self.old_classes)
            if old.any() and self.anchor > 0:
                held = self.anchor * embedding_anchor(model, x_f[old], model.embed(x_f[old]))
                total = total + held
                logs["old_anchor"] = float(held.detach())
            return total, logs

    class Strangers(GSLoRA):  # the anchor also on "strangers": mixes of two remaining people's replay images, so
        # that the update cannot move people outside the task (the earlier-forgotten ones among them) without data
        def loss(self, model, remain, forget, state):
            total, logs = super().loss(model, remain, forget, state)
            return stranger_anchor(self, model, remain, state, total, logs)

    class FirstMiddle(LayersClassHold):  # each task's first trial layersclshold with the forgetting term's β x2, every
        # later trial (after a missed target, by the shipped trial rule) GS-LoRA as shipped. The trial counter lives on
        # the class: the runner restores the method's own attributes before each trial
        seen: dict = {}

        def prepare(self, model, ctx):
            key = (id(self), ctx.position)
            FirstMiddle.seen[key] = FirstMiddle.seen.get(key, -1) + 1
            self.middle = FirstMiddle.seen[key] == 0
            if self.middle:
                peft = super().prepare(model, ctx)
                self.beta *= 2.0
                return peft
            self.hooks, self.captured, self.live = [], [], []
            return GSLoRA.prepare(self, model, ctx)

        def feature_term(self, emb_f, y_f, state):
            if self.middle:
                return super().feature_term(emb_f, y_f, state)
            return GSLoRA.feature_term(self, emb_f, y_f, state)

        def loss(self, model, remain, forget, state):
            if self.middle:
                return super().loss(model, remain, forget, state)
            return GSLoRA.loss(self, model, remain, forget, state)

    class HoldStrangers(LayersClassHold):  # layersclshold + the embedding anchor also on strangers (as `strangers`)
        def loss(self, model, remain, forget, state):
            total, logs = super().loss(model, remain, forget, state)
            out = stranger_anchor(self, model, remain, state, total, logs)
            self.captured.clear()  # the strangers' forwards passed the hooks too
            return out

    class MarginHold(GSLoRA):  # the replay images' margins held: weight x mean max(0, m0 - m), m the gap between the
        # own class's logit and the best other's (over the head's scale: cosines for CosFace), m0 the task start's;
        # the anchor holds where the embeddings are, this only that they stay as far inside their class
        weight = 10.0

        @staticmethod
        def margins(model, x, y):
            head = model.head
            logits = head(model.embed(x)).float() / float(getattr(head, "s", 1.0))
            own = logits.gather(1, y[:, None]).squeeze(1)
            return own - logits.scatter(1, y[:, None], float("-inf")).amax(1)

        def loss(self, model, remain, forget, state):
            total, logs = super().loss(model, remain, forget, state)
            x_r, y_r = remain
            with torch.no_grad(), model.disable_adapter():
                start = self.margins(model, x_r, y_r)
            held = self.weight * F.relu(start - self.margins(model, x_r, y_r)).mean()
            logs["margin_hold"] = float(held.detach())
            return total + held, logs

    class Fc2Only(GSLoRA):  # LoRA on each FFN's output projection only (fc1's adapter frozen at zero): a block's
        # update is then linear in its hidden activations, so a later task's update adds to an earlier one's
        # cancellation instead of changing the GELU gating it relies on
        def prepare(self, model, ctx):
            peft = super().prepare(model, ctx)
            for a_fc1, b_fc1, *_ in self.groups.params:  # gradients zeroed, not switched off: Adam keeps a state
                for q in (a_fc1, b_fc1):  # for every B, which the proximal step's per-block weights read
                    q.register_hook(torch.zeros_like)
            return peft

    class KeepLast(GSLoRA):  # a diagnostic: from task 2 on the last block's adapter is held at zero (gradients
        # zeroed), so a later task cannot change the block where an earlier task's cancellation lives
        def prepare(self, model, ctx):
            peft = super().prepare(model, ctx)
            if ctx.position > 0:
                for q in self.groups.params[-1]:
                    q.register_hook(torch.zeros_like)
            return peft

    class LastOnly(GSLoRA):  # the converse diagnostic: from task 2 on only the last block's adapter trains, so a later
        # task cannot move the earlier-forgotten people's input to the last block
        def prepare(self, model, ctx):
            peft = super().prepare(model, ctx)
            if ctx.position > 0:
                for block in self.groups.params[:-1]:
                    for q in block:
                        q.register_hook(torch.zeros_like)
            return peft

    class Projected(GSLoRA):  # every LoRA A kept out of the input directions the replay images use at the task
        # start (as orthogonal-subspace continual learning does): A <- A (I - U U^T) after every step, U the top
        # eigenvectors of the layer's input covariance over the replay images' tokens that hold `weight` % of its
        # energy; ΔW = B A then leaves those inputs' outputs unchanged
        weight = 95.0

        def prepare(self, model, ctx):
            from torch.utils.data import DataLoader

            peft = super().prepare(model, ctx)
            layers = [layer for block in self.groups.modules for layer in block]
            cov = {id(layer): None for layer in layers}

            def keep(layer):
                def hook(m, inputs, output):
                    x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
                    c = x.T @ x
                    cov[id(layer)] = c if cov[id(layer)] is None else cov[id(layer)] + c
                return hook

            hooks = [layer.base_layer.register_forward_hook(keep(layer)) for layer in layers]
            try:
                with torch.no_grad():
                    for x, _ in DataLoader(ctx.remain_data, batch_size=128):
                        peft.embed(x.to(ctx.device))
            finally:
                for h in hooks:
                    h.remove()
            self.projections = []
            for layer in layers:
                vals, vecs = torch.linalg.eigh(cov[id(layer)])
                vals, vecs = vals.flip(0).clamp(min=0), vecs.flip(1)
                k = int((torch.cumsum(vals, 0) / vals.sum() < self.weight / 100).sum()) + 1
                u = vecs[:, :k]
                proj = torch.eye(u.shape[0], device=u.device) - u @ u.T
                self.projections.append((layer.lora_A["default"].weight, proj))
            self.project()
            return peft

        @torch.no_grad()
        def project(self):
            for a, proj in self.projections:
                a.copy_(a @ proj.to(a.dtype))

        def train_step(self, model, remain, forget, optimizer, state):
            logs = super().train_step(model, remain, forget, optimizer, state)
            self.project()
            return logs

        def finish(self, model, ctx):
            self.projections = []
            return super().finish(model, ctx)

    class EarlierOut(Projected):  # every LoRA A kept out of the input directions an earlier task's update reads in
        # that layer (the right singular vectors of its merged B A holding 99% of its energy): a later task's update
        # then ignores what the earlier ones read, so it cannot feed it back through its own change; the bases are
        # the model's own updates, no data of the forgotten
        weight = 99.0

        def prepare(self, model, ctx):  # Projected's projection and step, these bases instead of the replay's
            peft = GSLoRA.prepare(self, model, ctx)
            if not hasattr(self, "earlier"):
                self.earlier = {}
            self.projections = []
            for i, layer in enumerate(self.layers()):
                if self.earlier.get(i):
                    q, _ = torch.linalg.qr(torch.cat(self.earlier[i], dim=1))
                    proj = torch.eye(q.shape[0], device=q.device) - q @ q.T
                    self.projections.append((layer.lora_A["default"].weight, proj))
            self.project()
            return peft

        def layers(self):  # the LoRA layers in block order, the keys of self.earlier
            return [layer for block in self.groups.modules for layer in block]

        @torch.no_grad()
        def finish(self, model, ctx):
            for i, layer in enumerate(self.layers()):
                delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).float()
                if float(delta.norm()) == 0.0:
                    continue
                _, sv, vh = torch.linalg.svd(delta, full_matrices=False)
                k = int((torch.cumsum(sv ** 2, 0) / (sv ** 2).sum() < self.weight / 100).sum()) + 1
                self.earlier.setdefault(i, []).append(vh[:k].T.clone())
            return super().finish(model, ctx)

    class Robust(GSLoRA):  # the collapse also under a random low-rank change of two blocks' FFN weights (what a
        # later task does to them: rank 8, about 20% of their norm), so that the next task cannot undo it as easily
        rel = 0.2
        blocks_per_step = 2

        def loss(self, model, remain, forget, state):
            from gslora.depth import collapse_loss

            total, logs = super().loss(model, remain, forget, state)
            x_f, y_f = forget
            g = torch.Generator().manual_seed(10_000 + state.step)
            chosen = torch.randperm(len(self.groups.modules), generator=g)[: self.blocks_per_step].tolist()
            hooks = []
            for b in chosen:
                for layer in self.groups.modules[b]:
                    w = layer.base_layer.weight
                    u = torch.randn(w.shape[0], 8, generator=g).to(w)
                    v = torch.randn(w.shape[1], 8, generator=g).to(w)
                    scale = self.rel * float(w.norm()) / float((u @ v.T).norm())

                    def add(m, i, o, u=u, v=v, scale=scale):
                        return o + scale * (i[0] @ v) @ u.T

                    hooks.append(layer.base_layer.register_forward_hook(add))
            try:
                emb = model.embed(x_f)
            finally:
                for h in hooks:
                    h.remove()
            term = self.args.collapse_weight * collapse_loss(emb, y_f)
            logs["robust"] = float(term.detach())
            return total + term, logs

    class NormHold(GSLoRA):  # the defaults, and the forget batch's class token entering the final norm kept as long as
        # the replay batch's (centred norm): the collapse otherwise shrinks it (ORL task 1: 2.08 -> 1.31 against 2.00 ->
        # 1.87 for the remaining people), so that the norm magnifies whatever a later task changes there
        weight = 10.0

        def prepare(self, model, ctx):
            peft = super().prepare(model, ctx)
            self.captured = []
            self.hook = peft.base_model.model.backbone.blocks[-1].register_forward_hook(
                lambda m, i, o: self.captured.append(o[:, 0]) if m.training else None)
            return peft

        def loss(self, model, remain, forget, state):
            self.captured.clear()
            self.n_r = remain[0].shape[0]
            out = super().loss(model, remain, forget, state)
            self.captured.clear()  # nothing of the graph stays on the method (trials deep-copy its state)
            return out

        def feature_term(self, emb_f, y_f, state):
            term = super().feature_term(emb_f, y_f, state)
            tok = self.captured[0].float()  # the main forward (the anchor's comes after this term)
            tok = tok - tok.mean(-1, keepdim=True)
            norm = tok.norm(dim=-1)
            short = F.relu(1 - norm[self.n_r:].mean() / norm[:self.n_r].mean().detach()) ** 2
            return term + self.weight * short

        def finish(self, model, ctx):
            self.hook.remove()
            return super().finish(model, ctx)

    return {"attack": Attack, "collapse": Collapse, "rmu": RMU, "layers": Layers, "droppath": DropPath,
            "oldapart": OldApart, "oldanchor": OldAnchor, "strangers": Strangers, "robust": Robust,
            "layerscls": LayersClass, "layerscls2": LayersClassPlus, "layersclshold": LayersClassHold,
            "layersclshalf": LayersClassHoldHalf, "layershold": LayersHold, "holdstrangers": HoldStrangers,
            "marginhold": MarginHold, "projected": Projected, "earlierout": EarlierOut, "fc2only": Fc2Only,
            "keeplast": KeepLast, "lastonly": LastOnly, "normhold": NormHold,
            "firstmiddle": FirstMiddle}


# ---------------------------------------------------------------------------------------------------------------------

def cli(*args) -> float:
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run([sys.executable, "-m", "gslora", *args], check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def summarise(results: dict) -> list[dict]:
    out = []
    for r in results["tasks"]:
        out.append({"task": r["task"], "acc_f": r["acc_f"], "acc_o": r["acc_o"], "acc_r": r["acc_r"],
                    "acc_r_change": r["acc_r_change_vs_pretrained"], "h_mean": r["h_mean"],
                    "probe_f": r.get("probe_f"), "probe_keep": r.get("probe_keep"),
                    "probe_o": r.get("probe_o"), "probe_o_before": r.get("probe_o_before"),
                    "check": {k: r["check"].get(k) for k in ("acc_f", "acc_r_drop", "probe_f", "probe_keep")},
                    "blocks": (r["method_info"] or {}).get("selected_blocks"), "steps": r["steps"],
                    "steps_all_trials": r["steps_all_trials"], "trials": len(r["trials"]),
                    "wall_seconds": r["wall_seconds"], "targets_val": r["targets"]["val"]})
    return out


def audit_summary(report: dict) -> dict:
    """The audit's numbers per model and its depth fractions; the per-class depth stays in the run's audit.json (it
    made this file megabytes)."""
    from gslora.audit import model_numbers

    depth = {label: ({k: v for k, v in d.items() if k != "per_class"} if isinstance(d, dict) else d)
             for label, d in (report.get("depth") or {}).items()}
    return {"models": {label: model_numbers(m) for label, m in report["models"].items()}, "depth": depth or None,
            "seconds": report["wall_seconds"]}


def calibration(original, retrained, data, plan_tasks, device) -> list[dict]:
    """Per task's forgotten classes: the in-loop probe of the original and of the retrained model on their
    validation + test images (neither model trained on them)."""
    from torch.utils.data import ConcatDataset

    from gslora.depth import model_probe

    out = []
    both = ConcatDataset([data.val, data.test])
    for t in plan_tasks:
        cls = t["forget_ids"]
        p_o, p_r = model_probe(original, both, device, cls), model_probe(retrained, both, device, cls)
        out.append({"task": t["task"], "images": len(both), "original": p_o, "retrained": p_r,
                    "retrained_keep": 100.0 * p_r / p_o if p_o else None})
    return out


def save(path: Path, saved: dict, name: str, record: dict, keys) -> None:
    """Merge the entries ``keys`` of this dataset's record into the results file as it is now (another run may have
    written other entries meanwhile)."""
    now = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    now["machine"] = saved["machine"]
    now["runs"].setdefault(name, {}).update({k: record[k] for k in keys if k in record})
    path.write_text(json.dumps(now, indent=1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", choices=sorted(RUNS))
    p.add_argument("--variants", default="head,defaults,paper-ce,attack,collapse,rmu")
    p.add_argument("--probe", default="probe_keep<=80", help="the probe target added for the feature objectives")
    p.add_argument("--weight", type=float, default=10.0, help="weight of the feature terms")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra RunConfig settings for every variant but head")
    p.add_argument("--tasks", default=None, help="another NxK than the dataset's (e.g. 2x10: its first two tasks)")
    p.add_argument("--no-audit", action="store_true", help="per-task numbers only (no audit, no calibration)")
    p.add_argument("--label", default="", help="suffix of the variants' names in the JSON")
    p.add_argument("--record-run", metavar="FOLDER", help="record a finished run folder (a CLI run with the --set "
                   "values given; its audit too, when it has one) under --label for the --only dataset, instead of "
                   "running anything")
    p.add_argument("--out", default="runs/depth")
    p.add_argument("--results", default=str(HERE.parent / "docs" / "results" / "depth_objectives.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from gslora import load_checkpoint, load_data, load_run_config, run_forgetting
    from gslora.audit import audit_run, cached_reference, run_classes
    from gslora.presets import resolve

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(args.results)
    saved = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    saved["machine"] = f"{platform.machine()} {os.cpu_count()}-core CPU, {platform.system()}, 1 torch thread"
    variants = make_variants()
    if args.record_run:
        folder = Path(args.record_run)
        results = json.loads((folder / "results.json").read_text())
        record = saved["runs"].setdefault((args.only or ["orl-4x5"])[0], {})
        record[args.label] = {"settings": list(args.overrides), "run": str(folder),
                              "seconds": sum(t["wall_seconds"] for t in results["tasks"]),
                              "tasks": summarise(results)}
        if (folder / "audit" / "audit.json").is_file():
            record[args.label]["audit"] = audit_summary(json.loads((folder / "audit" / "audit.json").read_text()))
        save(path, saved, (args.only or ["orl-4x5"])[0], record, [args.label])
        return 0
    for name in args.only or ["orl-4x5"]:
        data_spec, tasks = RUNS[name]
        tasks = args.tasks or tasks
        stem = name.split("-")[0]
        ckpt = out / f"{stem}.safetensors"
        record = saved["runs"].setdefault(name, {})
        if not ckpt.exists():
            record["pretrain_seconds"] = cli("pretrain", "--data", data_spec, "--model", "vit_face_tiny", "--out",
                                             str(ckpt), "--no-progress")
        meta = json.loads(ckpt.with_suffix(".json").read_text())
        record["pretrain"] = {k: v for k, v in meta.get("extra", meta).get("pretrain", {}).items() if k != "checks"}
        runs = {}
        for variant in args.variants.split(","):
            label = variant + args.label
            folder = out / f"{name}-{label}"
            model, m = load_checkpoint(ckpt)
            sets = list(args.overrides) if variant != "head" else []
            target = "acc_f<=2,acc_r_drop<=2"
            if variant in ("attack", "collapse", "rmu", "layers", "droppath", "oldapart", "oldanchor", "strangers",
                           "robust", "layerscls", "layerscls2", "layersclshold",
                           "layersclshalf", "layershold", "holdstrangers", "firstmiddle", "fc2only",
                           "keeplast", "lastonly",
                           "marginhold", "projected", "earlierout", "normhold"):
                target += "," + args.probe
            if variant != "head" and variant != "defaults":
                sets.append(f"target={target}")
            if variant == "paper-ce":
                sets = [s for s in sets if not s.startswith("target=")] + [
                    "method_args.forget_loss=ce", "method_args.sparsity=penalty", "method_args.alpha=1e-4",
                    "eval_every=0"]
            cfg = resolve(load_run_config(None, sets, data=data_spec, tasks=tasks,
                                          method="head" if variant == "head" else "gslora"))
            data = load_data(data_spec, image_size=model.image_size, seed=cfg.seed, split_ratio=cfg.split_ratio,
                             val_ratio=cfg.val_ratio)
            method = None
            if variant in variants:
                cls = variants[variant]
                cls.weight = args.weight
                method = cls(**cfg.method_args)
            t0 = time.perf_counter()
            result = run_forgetting(model, m["classes"], data, cfg, out_dir=folder, overwrite=True, method=method,
                                    source_checkpoint=ckpt)
            seconds = time.perf_counter() - t0
            runs[label] = folder
            record[label] = {"settings": sets, "seconds": seconds, "tasks": summarise(result.results)}
            print(f"{name} {label}: {seconds:.0f} s", flush=True)
            for r in record[label]["tasks"]:
                print(f"  task {r['task']}: Acc_f {r['acc_f']:.1f} Acc_o {r['acc_o']} dAcc_r {r['acc_r_change']:+.1f}"
                      f" H {r['h_mean'] or 0:.1f} probe_f {r['probe_f']} keep {r['probe_keep']} check "
                      f"{r['check']} blocks {r['blocks']} steps {r['steps']} ({r['steps_all_trials']})", flush=True)
            save(path, saved, name, record, ["pretrain", "pretrain_seconds", label])
        if args.no_audit:
            continue
        head = runs.get("head" + args.label) or (out / f"{name}-head")
        for label, folder in runs.items():
            if label.startswith("head"):
                continue
            report = audit_run(folder, compare={"head": head / "final.safetensors"} if head.exists() else None,
                               retrain_full=True, write=True)
            record[label]["audit"] = audit_summary(report)
            a = record[label]["audit"]["models"]
            save(path, saved, name, record, [label])
            print(f"{name} {label} audit: " + "; ".join(
                f"{k} probe {v['probe_f']:.1f} rec {v['recovery']} mia {v['mia_auc']}" for k, v in a.items()),
                flush=True)
        if "calibration" not in record and runs:
            folder = next(iter(v for k, v in runs.items() if not k.startswith("head")), None)
            if folder is not None:
                results = json.loads((folder / "results.json").read_text())
                model, m = load_checkpoint(ckpt)
                data = load_data(data_spec, image_size=model.image_size, seed=1337)
                _, remain = run_classes(results)
                retrained, _ = cached_reference(model, str(ckpt), data_spec, data, remain, 1337, {}, "cpu", False)
                tasks_ = [{"task": t["index"], "forget_ids": t["forget"]} for t in results["plan"]["tasks"]]
                record["calibration"] = calibration(model, retrained, data, tasks_, "cpu")
                print(f"{name} calibration: {record['calibration']}", flush=True)
                save(path, saved, name, record, ["calibration"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
