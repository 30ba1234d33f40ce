#!/usr/bin/env python3
"""Independent PyTorch GPT-2 reference for emix.

Subcommands
  golden OUTDIR [--n_layer 12 --n_embd 768 --n_head 12 --vocab 50257 --block 1024
                 --B 4 --T 64 --seed 0 --name gpt2_torch_124m --no_train --device D]
      Random GPT-2 -> float64 loss, logits, gradients (and ten AdamW / AdEMAMix
      steps on the batch, like gpt2_tiny) -> OUTDIR/NAME/ in the golden layout
      of ../shared/golden/gpt2_tiny (see shared/golden/README.md).
  selfcheck GOLDEN_TINY_DIR [--device cpu]
      Loads an existing golden case (params/inputs/targets) and checks that this
      script's float64 forward/backward/training reproduces its loss, logits,
      gradients and training losses.
  bench [--B 16 --T 1024 --steps 30 --warmup 10 --no_compile]
      GPT-2 124M (vocab padded to 50304), bf16 autocast, torch.compile,
      fused AdamW; prints one timing line.

Only plain torch ops; the model is written here (layout: llm.c order, matrices
[out, in], y = x W^T + b, fused qkv = q|k|v, tied wte head, tanh GELU,
LayerNorm eps 1e-5, causal attention scaled by 1/sqrt(head_size)).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-5

# (name, weight_decay) in the golden tensor order
TENSOR_ORDER = [
    ("wte", True), ("wpe", True), ("ln1w", False), ("ln1b", False),
    ("qkvw", True), ("qkvb", False), ("attprojw", True), ("attprojb", False),
    ("ln2w", False), ("ln2b", False), ("fcw", True), ("fcb", False),
    ("fcprojw", True), ("fcprojb", False), ("lnfw", False), ("lnfb", False),
]

# Hyper-parameters of the ten training steps, as in gpt2_tiny/meta.json
ADAMW_HP = {"lr": 0.01, "beta1": 0.9, "beta2": 0.95, "eps": 1e-08,
            "weight_decay": 0.1, "grad_clip": 0.0}
ADEMAMIX_HP = {"lr": 0.01, "beta1": 0.9, "beta2": 0.95, "beta3": 0.999,
               "alpha": 5.0, "eps": 1e-08, "weight_decay": 0.1,
               "t_alpha": 6, "t_beta3": 6, "grad_clip": 1.0}
TRAIN_STEPS = 10

FILES_DOC = {
    "params.bin": "float32 LE, tensors concatenated in the order of 'tensors'",
    "grads.bin": "float32 LE, same layout as params.bin: d(loss)/d(param)",
    "inputs.bin": "int32 LE, B*T token ids, row-major [B][T]",
    "targets.bin": "int32 LE, B*T token ids, row-major [B][T]",
    "logits.bin": "float32 LE, [B][T][V]",
}
NOTES = ("losses[i] is the loss before optimizer step i+1 (losses[0] is the initial "
         "loss) and the last entry is the loss after the final step. Weight decay "
         "applies only to tensors with weight_decay=true. Clipping by global L2 norm: "
         "if norm > clip, every gradient is scaled by clip/norm. The learning rate is "
         "constant (no schedule). t_alpha/t_beta3 are the AdEMAMix warmup lengths of "
         "alpha and beta3.")


# ----------------------------------------------------------------------------
# Functional GPT-2 over tensors laid out exactly like the golden table
# ----------------------------------------------------------------------------

def tensor_shapes(cfg):
    L, C, V, S = cfg["n_layer"], cfg["n_embd"], cfg["vocab_size"], cfg["block_size"]
    return {
        "wte": [V, C], "wpe": [S, C],
        "ln1w": [L, C], "ln1b": [L, C],
        "qkvw": [L, 3 * C, C], "qkvb": [L, 3 * C],
        "attprojw": [L, C, C], "attprojb": [L, C],
        "ln2w": [L, C], "ln2b": [L, C],
        "fcw": [L, 4 * C, C], "fcb": [L, 4 * C],
        "fcprojw": [L, C, 4 * C], "fcprojb": [L, C],
        "lnfw": [C], "lnfb": [C],
    }


def tensor_table(cfg):
    shapes = tensor_shapes(cfg)
    table, off = [], 0
    for name, wd in TENSOR_ORDER:
        shape = shapes[name]
        count = int(np.prod(shape))
        table.append({"name": name, "shape": list(shape), "offset": off,
                      "count": count, "weight_decay": wd})
        off += count
    return table, off


def layer_norm(x, w, b):
    # biased variance, eps 1e-5 (written out, not F.layer_norm, to stay explicit)
    mean = x.mean(dim=-1, keepdim=True)
    xc = x - mean
    var = (xc * xc).mean(dim=-1, keepdim=True)
    return xc * torch.rsqrt(var + LN_EPS) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def gpt2_forward(P, idx, cfg):
    """P: dict name -> tensor (golden shapes). idx: [B,T] int64. Returns logits [B,T,V]."""
    B, T = idx.shape
    C, nh = cfg["n_embd"], cfg["n_head"]
    hs = C // nh
    x = P["wte"][idx] + P["wpe"][:T].unsqueeze(0)                    # [B,T,C]
    causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
    scale = 1.0 / math.sqrt(hs)
    for l in range(cfg["n_layer"]):
        h = layer_norm(x, P["ln1w"][l], P["ln1b"][l])
        qkv = h @ P["qkvw"][l].t() + P["qkvb"][l]                      # [B,T,3C]
        q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
        q = q.reshape(B, T, nh, hs).transpose(1, 2)                      # [B,nh,T,hs]
        k = k.reshape(B, T, nh, hs).transpose(1, 2)
        v = v.reshape(B, T, nh, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * scale                          # [B,nh,T,T]
        att = att.masked_fill(~causal, float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + (y @ P["attprojw"][l].t() + P["attprojb"][l])
        h = layer_norm(x, P["ln2w"][l], P["ln2b"][l])
        h = gelu_tanh(h @ P["fcw"][l].t() + P["fcb"][l])
        x = x + (h @ P["fcprojw"][l].t() + P["fcprojb"][l])
    x = layer_norm(x, P["lnfw"], P["lnfb"])
    return x @ P["wte"].t()                                              # tied head


def loss_fn(P, idx, tgt, cfg):
    logits = gpt2_forward(P, idx, cfg)
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), reduction="mean")
    return loss, logits


def flat_to_params(flat, table, device, dtype=torch.float64):
    P = {}
    for t in table:
        a = flat[t["offset"]:t["offset"] + t["count"]].reshape(t["shape"])
        P[t["name"]] = torch.tensor(a, dtype=dtype, device=device).requires_grad_(True)
    return P


def params_to_flat(P, table, attr=None):
    parts = []
    for t in table:
        x = P[t["name"]]
        if attr == "grad":
            x = x.grad
        parts.append(x.detach().reshape(-1).to("cpu", torch.float64).numpy())
    return np.concatenate(parts)


def fwd_bwd(P, idx, tgt, cfg):
    for p in P.values():
        p.grad = None
    loss, logits = loss_fn(P, idx, tgt, cfg)
    loss.backward()
    return loss.item(), logits.detach()


# ----------------------------------------------------------------------------
# Ten training steps (AdamW: torch.optim.AdamW; AdEMAMix: written from the paper)
# ----------------------------------------------------------------------------

def clip_global(P, clip):
    norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in P.values()))
    if clip > 0 and norm > clip:
        s = clip / norm
        for p in P.values():
            p.grad.mul_(s)
    return norm


def _hl_f(beta, eps=1e-8):
    return math.log(0.5) / math.log(beta + eps) - 1.0


def _hl_finv(h):
    return math.pow(0.5, 1.0 / (h + 1.0))


def ademamix_beta3(t, beta1, beta3, t_beta3):
    if t_beta3 and t < t_beta3:
        a = t / float(t_beta3)
        return _hl_finv((1.0 - a) * _hl_f(beta1) + a * _hl_f(beta3))
    return beta3


def ademamix_alpha(t, alpha, t_alpha):
    if t_alpha and t < t_alpha:
        return alpha * (t / float(t_alpha))
    return alpha


class AdEMAMixRef:
    def __init__(self, P, wd_names, hp):
        self.P, self.wd_names, self.hp = P, wd_names, hp
        self.t = 0
        self.state = {}

    @torch.no_grad()
    def step(self):
        hp = self.hp
        self.t += 1
        t = self.t
        lr, b1, b2, b3, eps = hp["lr"], hp["beta1"], hp["beta2"], hp["beta3"], hp["eps"]
        b3t = ademamix_beta3(t, b1, b3, hp["t_beta3"])
        at = ademamix_alpha(t, hp["alpha"], hp["t_alpha"])
        bc1 = 1.0 - b1 ** t
        bc2 = 1.0 - b2 ** t
        for name, p in self.P.items():
            g = p.grad
            st = self.state.setdefault(name, {
                "m1": torch.zeros_like(p), "m2": torch.zeros_like(p), "nu": torch.zeros_like(p)})
            if b1 != 0.0:
                st["m1"].mul_(b1).add_(g, alpha=1.0 - b1)
                m1 = st["m1"]
            else:
                m1 = g
            st["m2"].mul_(b3t).add_(g, alpha=1.0 - b3t)
            st["nu"].mul_(b2).addcmul_(g, g, value=1.0 - b2)
            denom = st["nu"].sqrt() / math.sqrt(bc2) + eps
            upd = (m1 / bc1 + at * st["m2"]) / denom
            wd = hp["weight_decay"] if name in self.wd_names else 0.0
            if wd != 0.0:
                upd = upd + wd * p
            p.add_(upd, alpha=-lr)


def train_run(flat0, table, idx, tgt, cfg, which, device):
    hp = ADAMW_HP if which == "adamw" else ADEMAMIX_HP
    P = flat_to_params(flat0, table, device)
    wd_names = {t["name"] for t in table if t["weight_decay"]}
    if which == "adamw":
        groups = [
            {"params": [P[n] for n, _ in TENSOR_ORDER if n in wd_names], "weight_decay": hp["weight_decay"]},
            {"params": [P[n] for n, _ in TENSOR_ORDER if n not in wd_names], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                                eps=hp["eps"], foreach=False, fused=False)
    else:
        opt = AdEMAMixRef(P, wd_names, hp)
    losses, norms = [], []
    for _ in range(TRAIN_STEPS):
        loss, _ = fwd_bwd(P, idx, tgt, cfg)
        losses.append(loss)
        norms.append(clip_global(P, hp["grad_clip"]))
        opt.step()
    with torch.no_grad():
        losses.append(loss_fn(P, idx, tgt, cfg)[0].item())
    return {"hyperparameters": dict(hp), "losses": losses, "grad_norms_before_clip": norms}


# ----------------------------------------------------------------------------
# golden
# ----------------------------------------------------------------------------

def pick_device(name):
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def init_params_flat(cfg, table, gen):
    """Random float32-representable parameters in golden layout."""
    parts = []
    for t in table:
        name, shape = t["name"], t["shape"]
        r = torch.randn(*shape, generator=gen, dtype=torch.float64)
        if name in ("ln1w", "ln2w", "lnfw"):
            x = 1.0 + 0.1 * r
        elif name in ("ln1b", "ln2b", "lnfb"):
            x = 0.05 * r
        elif name.endswith("b"):          # linear biases
            x = 0.02 * r
        else:                             # wte, wpe, matrices
            x = 0.02 * r
        parts.append(x.reshape(-1).numpy())
    # round to float32 so the float64 reference is computed at the exact stored values
    return np.concatenate(parts).astype(np.float32).astype(np.float64)


def cmd_golden(a):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = pick_device(a.device)
    cfg = {"arch": "gpt2", "vocab_size": a.vocab, "n_layer": a.n_layer, "n_embd": a.n_embd,
           "n_head": a.n_head, "block_size": a.block, "layernorm_eps": LN_EPS,
           "gelu": "tanh", "tied_embeddings": True}
    assert a.n_embd % a.n_head == 0, "n_embd must be divisible by n_head"
    assert a.T <= a.block, "T must be <= block"
    table, nparams = tensor_table(cfg)
    gen = torch.Generator().manual_seed(a.seed)
    flat0 = init_params_flat(cfg, table, gen)
    inputs = torch.randint(0, a.vocab, (a.B, a.T), generator=gen, dtype=torch.int64)
    targets = torch.randint(0, a.vocab, (a.B, a.T), generator=gen, dtype=torch.int64)
    idx, tgt = inputs.to(device), targets.to(device)

    t0 = time.time()
    P = flat_to_params(flat0, table, device)
    loss, logits = fwd_bwd(P, idx, tgt, cfg)
    grads = params_to_flat(P, table, attr="grad")
    logits32 = logits.to("cpu", torch.float32).numpy()
    del P, logits
    print(f"[golden] device={device} params={nparams} loss={loss!r} "
          f"(ln V = {math.log(a.vocab):.6f}) fwd/bwd {time.time() - t0:.1f}s", file=sys.stderr)

    meta = {"model": cfg, "batch": {"B": a.B, "T": a.T}, "num_parameters": nparams,
            "tensors": table, "files": FILES_DOC, "loss": loss}
    if not a.no_train:
        for which in ("adamw", "ademamix"):
            t0 = time.time()
            meta["train_" + which] = train_run(flat0, table, idx, tgt, cfg, which, device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"[golden] train_{which}: losses {meta['train_' + which]['losses'][0]:.6f} -> "
                  f"{meta['train_' + which]['losses'][-1]:.6f} ({time.time() - t0:.1f}s)", file=sys.stderr)
        meta["notes"] = NOTES
    else:
        meta["notes"] = "generated with --no_train: no train_adamw / train_ademamix sections"

    out = os.path.join(a.outdir, a.name)
    os.makedirs(out, exist_ok=True)
    flat0.astype("<f4").tofile(os.path.join(out, "params.bin"))
    grads.astype("<f4").tofile(os.path.join(out, "grads.bin"))
    inputs.numpy().astype("<i4").tofile(os.path.join(out, "inputs.bin"))
    targets.numpy().astype("<i4").tofile(os.path.join(out, "targets.bin"))
    logits32.astype("<f4").tofile(os.path.join(out, "logits.bin"))
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"[golden] wrote {out}", file=sys.stderr)


# ----------------------------------------------------------------------------
# selfcheck
# ----------------------------------------------------------------------------

def cmd_selfcheck(a):
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device(a.device)
    d = a.golden_dir
    meta = json.load(open(os.path.join(d, "meta.json")))
    cfg = dict(meta["model"])
    table = meta["tensors"]
    B, T = meta["batch"]["B"], meta["batch"]["T"]
    V = cfg["vocab_size"]
    # the table must be the one this script would write
    mine, n = tensor_table(cfg)
    ok_table = (mine == table and n == meta["num_parameters"])
    flat0 = np.fromfile(os.path.join(d, "params.bin"), dtype="<f4").astype(np.float64)
    gref = np.fromfile(os.path.join(d, "grads.bin"), dtype="<f4").astype(np.float64)
    lref = np.fromfile(os.path.join(d, "logits.bin"), dtype="<f4").astype(np.float64)
    inputs = np.fromfile(os.path.join(d, "inputs.bin"), dtype="<i4").reshape(B, T)
    targets = np.fromfile(os.path.join(d, "targets.bin"), dtype="<i4").reshape(B, T)
    idx = torch.tensor(inputs, dtype=torch.int64, device=device)
    tgt = torch.tensor(targets, dtype=torch.int64, device=device)

    P = flat_to_params(flat0, table, device)
    loss, logits = fwd_bwd(P, idx, tgt, cfg)
    g = params_to_flat(P, table, attr="grad")
    loss_rel = abs(loss - meta["loss"]) / abs(meta["loss"])
    logit_abs = float(np.max(np.abs(logits.cpu().numpy().reshape(-1) - lref)))
    print(f"table matches: {ok_table}")
    print(f"loss: mine {loss!r} ref {meta['loss']!r} rel err {loss_rel:.3e}")
    print(f"logits: max abs err {logit_abs:.3e}")
    worst = 0.0
    for t in table:
        s = slice(t["offset"], t["offset"] + t["count"])
        rel = np.linalg.norm(g[s] - gref[s]) / max(np.linalg.norm(gref[s]), 1e-300)
        worst = max(worst, rel)
        print(f"  grad {t['name']:9s} rel L2 err {rel:.3e}")
    gmax = float(np.max(np.abs(g - gref)) / np.max(np.abs(gref)))
    print(f"grads: worst per-tensor rel L2 err {worst:.3e}, max abs err / max|g| {gmax:.3e}")
    ok = ok_table and loss_rel <= 1e-9 and worst <= 1e-6 and logit_abs <= 1e-5

    for which in ("adamw", "ademamix"):
        key = "train_" + which
        if key not in meta:
            continue
        r = train_run(flat0, table, idx, tgt, cfg, which, device)
        ref = meta[key]
        hp_ok = ref["hyperparameters"] == r["hyperparameters"]
        lrel = max(abs(x - y) / abs(y) for x, y in zip(r["losses"], ref["losses"]))
        nrel = max(abs(x - y) / abs(y) for x, y in zip(r["grad_norms_before_clip"],
                                                         ref["grad_norms_before_clip"]))
        print(f"{key}: hyperparameters same {hp_ok}; max rel err losses {lrel:.3e}, "
              f"grad norms {nrel:.3e}")
        ok = ok and hp_ok and lrel <= 1e-8 and nrel <= 1e-8
    print("SELFCHECK " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


# ----------------------------------------------------------------------------
# bench: GPT-2 124M, bf16 autocast, torch.compile, fused AdamW
# ----------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, C, nh):
        super().__init__()
        self.nh = nh
        self.ln1 = nn.LayerNorm(C, eps=LN_EPS)
        self.qkv = nn.Linear(C, 3 * C)
        self.attproj = nn.Linear(C, C)
        self.ln2 = nn.LayerNorm(C, eps=LN_EPS)
        self.fc = nn.Linear(C, 4 * C)
        self.fcproj = nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        hs = C // self.nh
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q = q.view(B, T, self.nh, hs).transpose(1, 2)
        k = k.view(B, T, self.nh, hs).transpose(1, 2)
        v = v.view(B, T, self.nh, hs).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attproj(y)
        x = x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))
        return x


class GPT2(nn.Module):
    def __init__(self, L=12, C=768, nh=12, V=50304, S=1024):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(S, C)
        self.blocks = nn.ModuleList([Block(C, nh) for _ in range(L)])
        self.lnf = nn.LayerNorm(C, eps=LN_EPS)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * L) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for blk in self.blocks:
            x = blk(x)
        logits = F.linear(self.lnf(x), self.wte.weight)   # tied head
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))


def cmd_bench(a):
    if not torch.cuda.is_available():
        print("bench: CUDA not available", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    dev = torch.device("cuda")
    torch.manual_seed(a.seed)
    V, S = 50304, 1024
    B, T = a.B, a.T
    model = GPT2(12, 768, 12, V, S).to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    nodecay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": nodecay, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    nb = 4
    xs = torch.randint(0, 50257, (nb, B, T), device=dev)
    ys = torch.randint(0, 50257, (nb, B, T), device=dev)

    mode = "torch.compile"
    run_model = model
    if a.no_compile:
        mode = "torch eager"
    else:
        try:
            run_model = torch.compile(model)
        except Exception as e:  # noqa: BLE001
            print(f"bench: torch.compile() FAILED ({type(e).__name__}: {e}); falling back to eager",
                  file=sys.stderr)
            mode = "torch.compile FAILED -> eager fallback:"
            run_model = model

    def step(i):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = run_model(xs[i % nb], ys[i % nb])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    # first step triggers compilation: catch failures there too
    t0 = time.time()
    try:
        loss = step(0)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001
        if run_model is model:
            raise
        print(f"bench: torch.compile FAILED at first step ({type(e).__name__}: "
              f"{str(e).splitlines()[0] if str(e) else ''}); falling back to eager", file=sys.stderr)
        mode = "torch.compile FAILED -> eager fallback:"
        run_model = model
        opt.zero_grad(set_to_none=True)
        loss = step(0)
        torch.cuda.synchronize()
    print(f"bench: {nparams} params, first step (incl. compile) {time.time() - t0:.1f}s, "
          f"loss {loss.item():.4f}; device {torch.cuda.get_device_name()} torch {torch.__version__}",
          file=sys.stderr)
    for i in range(1, max(a.warmup, 1)):
        step(i)
    torch.cuda.synchronize()

    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(a.steps):
        loss = step(i)
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / a.steps
    tok_s = B * T / (ms / 1000.0)
    print(f"bench: final loss {loss.item():.4f}, peak mem "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", file=sys.stderr)
    print(f"{mode} GPT-2 124M: B={B} T={T}: {ms:.2f} ms/step, {tok_s:.0f} tokens/s", flush=True)
    return 0


# ----------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("golden", help="write a float64 golden case")
    g.add_argument("outdir")
    g.add_argument("--n_layer", type=int, default=12)
    g.add_argument("--n_embd", type=int, default=768)
    g.add_argument("--n_head", type=int, default=12)
    g.add_argument("--vocab", type=int, default=50257)
    g.add_argument("--block", type=int, default=1024)
    g.add_argument("--B", type=int, default=4)
    g.add_argument("--T", type=int, default=64)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--name", default="gpt2_torch_124m", help="case folder name under OUTDIR")
    g.add_argument("--no_train", action="store_true", help="skip the train_adamw/train_ademamix sections")
    g.add_argument("--device", default=None, help="default: cuda if available else cpu")

    s = sub.add_parser("selfcheck", help="reproduce an existing golden case")
    s.add_argument("golden_dir")
    s.add_argument("--device", default="cpu")

    b = sub.add_parser("bench", help="torch.compile GPT-2 124M training step timing")
    b.add_argument("--B", type=int, default=16)
    b.add_argument("--T", type=int, default=1024)
    b.add_argument("--steps", type=int, default=30)
    b.add_argument("--warmup", type=int, default=10)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no_compile", action="store_true")

    a = ap.parse_args(argv)
    if a.cmd == "golden":
        return cmd_golden(a) or 0
    if a.cmd == "selfcheck":
        return cmd_selfcheck(a)
    return cmd_bench(a)


if __name__ == "__main__":
    sys.exit(main())
