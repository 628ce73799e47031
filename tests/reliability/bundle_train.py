"""MONAI training driven by the reliability tests: the bundles' components on tiny 2D NIfTI images.

usage: bundle_train.py DATA_DIR OUT_DIR MAX_EPOCHS RESUME(true|false) [--hang-at-iteration I]
                       [--hang-on-best-save N] [--lr LR] [--out F]

The bundle's transform chains (``train_transforms`` with random crops, flips and intensity scaling),
``CacheDataset`` and MONAI's shuffling ``DataLoader``, ``SupervisedTrainer`` / ``SupervisedEvaluator`` with
``ValidationHandler`` and ``MeanDice``, and the bundles' reliability handlers: ``RunLock``,
``NonFiniteLossGuard``, ``ResumableCheckpoint`` and ``BestModelSaver``.

Prints ``ITER <epoch> <iteration>`` after every iteration and ``VAL <epoch> <dice>`` after every validation.
``--hang-at-iteration I``: after iteration I print ``PAUSED`` and sleep (the test SIGKILLs it mid-epoch).
``--hang-on-best-save N``: in the N-th write of ``model.pt``, once the new file is complete but before it
replaces the old one, print ``HOOK <tmp> <final>`` and sleep (the test SIGKILLs it there).
``--out F``: at the end, write the final weights with torch.save.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import MeanDice, ValidationHandler, from_engine
from monai.losses import DiceCELoss
from monai.utils import set_determinism

from medurwkv_net.bundle import eval_transforms, make_inferer, postprocessing, train_transforms
from medurwkv_net.reliability import BestModelSaver, NonFiniteLossGuard, ResumableCheckpoint, RunLock

from _train_helpers import hang_on_nth_write  # the script's own folder is first on sys.path

SIZE = [12, 12]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("out_dir")
    ap.add_argument("max_epochs", type=int)
    ap.add_argument("resume")
    ap.add_argument("--hang-at-iteration", type=int, default=0)
    ap.add_argument("--hang-on-best-save", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out_dir)
    lock = RunLock(out / "models").acquire()  # what the bundles' ``initialize`` does
    set_determinism(seed=0)
    datalist = json.loads((Path(args.data_dir) / "datalist.json").read_text())

    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Dropout2d(0.2), torch.nn.Conv2d(8, 2, 1)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=args.max_epochs, power=0.9)
    common = dict(in_channels=1, spatial_size=SIZE, spatial_mode="crop", intensity="minmax", label_mode="index")
    train_ds = CacheDataset(datalist["training"], train_transforms(
        **common, num_samples=1, flip_axes=[0, 1], rotate90=True, intensity_scale=0.15, intensity_shift=0.1),
        progress=False)
    val_ds = CacheDataset(datalist["validation"], eval_transforms(**common), progress=False)
    best = BestModelSaver(str(out / "models"), {"model": net}, before_replace=hang_on_nth_write(args.hang_on_best_save))
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(val_ds, batch_size=1), network=net,
        inferer=make_inferer(SIZE, "crop"), postprocessing=postprocessing(2, with_label=True),
        key_val_metric={"val_mean_dice": MeanDice(include_background=False,
                                                  output_transform=from_engine(["pred", "label"]))},
        val_handlers=[best],
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=args.max_epochs,
        train_data_loader=DataLoader(train_ds, batch_size=2, shuffle=True), network=net, optimizer=opt,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        train_handlers=[
            lock,
            NonFiniteLossGuard(optimizer=opt),
            ResumableCheckpoint(out / "models" / "checkpoints", objects={"model": net, "optimizer": opt,
                                "lr_scheduler": sched}, resume=args.resume, metric_name="val_mean_dice",
                                metric_engine=evaluator, best_model=best),
            ValidationHandler(validator=evaluator, epoch_level=True, interval=1),
        ],
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())

    @trainer.on(Events.ITERATION_COMPLETED)
    def _iter(engine):
        print(f"ITER {engine.state.epoch} {engine.state.iteration}", flush=True)
        if engine.state.iteration == args.hang_at_iteration:
            print(f"PAUSED {engine.state.epoch} {engine.state.iteration}", flush=True)
            time.sleep(600)

    evaluator.add_event_handler(Events.COMPLETED, lambda e: print(
        f"VAL {trainer.state.epoch} {e.state.metrics['val_mean_dice']:.6f}", flush=True))
    trainer.run()
    if args.out:
        torch.save(net.state_dict(), args.out)
    print(f"DONE {trainer.state.epoch} {trainer.state.iteration} best={evaluator.state.best_metric:.6f}"
          f"@{evaluator.state.best_metric_epoch}", flush=True)


if __name__ == "__main__":
    main()
