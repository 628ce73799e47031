"""Training script driven by test_fault_injection.py: tiny ignite training with ResumableCheckpoint.

usage: fault_train.py SAVE_DIR MAX_EPOCHS RESUME(true|false|auto) [--hang-at-iteration I] [--hang-on-save N]
                     [--out F]

Prints ``ITER <epoch> <iteration>`` after every iteration and ``SAVED <file>`` after every checkpoint.
``--hang-at-iteration I``: after iteration I print ``PAUSED`` and sleep (the test SIGKILLs it mid-epoch).
``--hang-on-save N``: on the N-th checkpoint write, once the temporary file is complete and fsync'ed but
before ``os.replace``, print ``HOOK <tmp> <final>`` and sleep (the test SIGKILLs it there).
``--out F``: at the end, write the final model state with torch.save (for exactness comparison).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _train_helpers import hang_on_nth_write, make_run  # noqa: E402
from ignite.engine import Events  # noqa: E402

from medurwkv_net.reliability import ResumableCheckpoint  # noqa: E402
from ignite.handlers.checkpoint import CheckpointEvents  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("save_dir")
    ap.add_argument("max_epochs", type=int)
    ap.add_argument("resume")
    ap.add_argument("--hang-at-iteration", type=int, default=0)
    ap.add_argument("--hang-on-save", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    model, opt, sched, loader, trainer = make_run()
    ckpt = ResumableCheckpoint(
        args.save_dir, trainer, {"model": model, "optimizer": opt, "lr_scheduler": sched},
        resume=args.resume, metric_name="val_acc", before_replace=hang_on_nth_write(args.hang_on_save),
    )

    @trainer.on(Events.STARTED)
    def _started(engine):  # registered after the checkpoint's STARTED handler: state already restored
        print(f"STARTED epoch={engine.state.epoch} iteration={engine.state.iteration} "
              f"from={ckpt.loaded_from.name if ckpt.loaded_from else None}", flush=True)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _iter(engine):
        print(f"ITER {engine.state.epoch} {engine.state.iteration}", flush=True)
        if engine.state.iteration == args.hang_at_iteration:
            print(f"PAUSED {engine.state.epoch} {engine.state.iteration}", flush=True)
            time.sleep(600)

    trainer.register_events(*CheckpointEvents)
    trainer.add_event_handler(CheckpointEvents.SAVED_CHECKPOINT,
                              lambda e: print(f"SAVED {ckpt.last_checkpoint.name}", flush=True))
    trainer.run(loader, max_epochs=args.max_epochs)
    if args.out:
        torch.save(model.state_dict(), args.out)
    print(f"DONE {trainer.state.epoch} {trainer.state.iteration}", flush=True)


if __name__ == "__main__":
    main()
