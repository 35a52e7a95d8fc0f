"""Noise2Void (CAREamics, its default N2V configuration) trained for a wall-time budget.

Runs in the peers' virtual environment (`make bench-peers` builds it), not in photongap's.
Reads the noisy training images and the noisy test images from an ``.npz`` written by
``benchmarks/bench_peers.py``, trains with batch 16 and 64 px patches (as photongap's
benchmarks do), and saves a checkpoint at each evaluation time. With ``--axes ZYX`` the arrays
are volumes (a time-lapse given as Z, ``benchmarks/bench_3d.py``) and the patches 3D, of
``--patch-size D Y X`` in batches of ``--batch-size``. Evaluation is done
after training, so it costs the training clock nothing. Writes the test predictions at each
time to an ``.npz``; PSNR is computed by photongap's own code in bench_peers.py.

    .peers-venv/bin/python benchmarks/peers/n2v_curve.py DATA.npz OUT.npz --minutes 1 2 5 [--axes ZYX --patch-size 8 48 48 --batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import lightning as L
import numpy as np


class TimedSnapshots(L.Callback):
    """Keep the weights at given training wall times; stop after the last one."""

    def __init__(self, minutes: list[float], directory: str) -> None:
        self.directory = directory
        self.pending = sorted(minutes)
        self.snapshots: list[tuple[float, int, dict]] = []
        self.started = 0.0
        self.excluded = 0.0

    def on_train_start(self, trainer, module) -> None:
        self.started = time.monotonic()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        began = time.monotonic()
        elapsed = (began - self.started - self.excluded) / 60
        while self.pending and elapsed >= self.pending[0]:
            path = f"{self.directory}/at_{len(self.snapshots)}.ckpt"
            trainer.save_checkpoint(path)
            self.snapshots.append((elapsed, trainer.global_step, path))
            print(f"  N2V step {trainer.global_step:6d}  {elapsed:6.2f} min", flush=True)
            self.pending.pop(0)
        if not self.pending:
            trainer.should_stop = True
        self.excluded += time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help=".npz with train_0.., test_0..")
    parser.add_argument("out", help=".npz to write the predictions to")
    parser.add_argument("--minutes", type=float, nargs="+", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--axes", default="YX", choices=["YX", "ZYX"])
    parser.add_argument("--patch-size", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from careamics import CAREamist
    from careamics.config import create_n2v_config

    data = np.load(args.data)
    train = [data[k].astype(np.float32) for k in sorted(data.files) if k.startswith("train_")]
    test = [data[k].astype(np.float32) for k in sorted(data.files) if k.startswith("test_")]
    config = create_n2v_config(
        experiment_name="n2v_peer", data_type="array", axes=args.axes, patch_size=args.patch_size, batch_size=args.batch_size, num_epochs=100_000
    )
    config.data_config.seed = args.seed
    work = Path(str(args.out) + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    snapshots = TimedSnapshots(args.minutes, str(work))
    careamist = CAREamist(config, callbacks=[snapshots], enable_progress_bar=False, work_dir=str(work))
    started = time.monotonic()
    careamist.train(train_data=train)
    print(f"  N2V trained {time.monotonic() - started:.0f} s (evaluations excluded)", flush=True)

    results: dict[str, np.ndarray] = {}
    points = []
    for index, (minutes, step, checkpoint) in enumerate(snapshots.snapshots):
        for i, image in enumerate(test):
            # Its U-Net takes sides that are multiples of 4 (2 ** depth): reflect-pad, then crop back.
            padded = np.pad(image, [(0, -size % 4) for size in image.shape], mode="reflect")
            predictions, _ = careamist.predict(padded, data_type="array", axes=args.axes, checkpoint=checkpoint)
            results[f"pred_{index}_{i}"] = np.squeeze(np.asarray(predictions[0]))[tuple(slice(0, size) for size in image.shape)]
        points.append({"minutes": round(minutes, 3), "step": step})
    np.savez(args.out, points=json.dumps(points), **results)


if __name__ == "__main__":
    main()
