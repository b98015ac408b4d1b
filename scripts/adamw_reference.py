#!/usr/bin/env python3
"""Reference for rdrop-train's AdamW: torch.optim.AdamW with two parameter groups (decay / no decay),
three steps with fixed gradients and a changing learning rate. Writes
crates/train/tests/fixtures/adamw.json (initial values, grads per step, lr per step, final values).
  PY=$(bash scripts/py-env.sh)/bin/python; $PY scripts/adamw_reference.py
"""
import json
import os

import torch

torch.manual_seed(0)
init = {
    "l.weight": torch.randn(2, 3),
    "l.bias": torch.randn(3),
    "n.layer_norm.weight": 1 + 0.1 * torch.randn(3),
}
params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
decay = [params["l.weight"]]
no_decay = [params["l.bias"], params["n.layer_norm.weight"]]
opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
    lr=1e-2, betas=(0.9, 0.98), eps=1e-8, foreach=False)
steps = []
for lr in [1e-2, 5e-3, 2e-2]:
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    for g in opt.param_groups:
        g["lr"] = lr
    for k, p in params.items():
        p.grad = grads[k].clone()
    opt.step()
    steps.append({"lr": lr, "grads": {k: g.flatten().tolist() for k, g in grads.items()}})
out = {
    "betas": [0.9, 0.98], "eps": 1e-8, "weight_decay": 0.01,
    "shapes": {k: list(v.shape) for k, v in init.items()},
    "init": {k: v.flatten().tolist() for k, v in init.items()},
    "steps": steps,
    "final": {k: p.detach().flatten().tolist() for k, p in params.items()},
    "torch": torch.__version__,
}
path = os.path.join(os.path.dirname(__file__), "..", "crates/train/tests/fixtures/adamw.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1)
print("wrote", os.path.normpath(path))
