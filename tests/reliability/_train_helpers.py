"""Tiny ignite training used by the checkpoint tests (in-process and in a subprocess)."""
from __future__ import annotations

import random

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader, TensorDataset


def make_run(n_samples: int = 32, batch_size: int = 4, seed: int = 0, dropout: float = 0.2):
    """Model, optimizer, LR scheduler, data loader and trainer; the data loader shuffles (uses torch RNG)."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n_samples, 6, generator=g)
    y = (x[:, :3].sum(1, keepdim=True) > 0).float()
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(8, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)

    def step(engine, batch):
        model.train()
        xb, yb = batch
        # consume python and numpy RNG too, so that their restoration matters
        noise = random.random() * 1e-3 + float(np.random.rand()) * 1e-3
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xb + noise), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    trainer = Engine(step)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())

    def epoch_loss(engine):
        model.eval()
        with torch.no_grad():
            engine.state.metrics["val_loss"] = float(
                torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
            )
            engine.state.metrics["val_acc"] = float(((model(x) > 0).float() == y).float().mean())

    trainer.add_event_handler(Events.EPOCH_COMPLETED, epoch_loss)
    return model, opt, sched, loader, trainer


def hang_on_nth_write(n: int):
    """A ``before_replace`` hook that, on the ``n``-th write (0: never), prints ``HOOK <tmp> <final>`` and sleeps,
    so that a test can SIGKILL the process between a complete temporary file and its ``os.replace``."""
    import time

    writes = {"n": 0}

    def hook(tmp, final) -> None:
        writes["n"] += 1
        if writes["n"] == n:
            print(f"HOOK {tmp} {final}", flush=True)
            time.sleep(600)

    return hook
