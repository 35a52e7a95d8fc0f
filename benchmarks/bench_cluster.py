"""Dask against one process: a large OME-Zarr image and a folder of TIFFs, as users run them.

Each run is the command line in a subprocess, so its wall time includes starting Python,
torch and (for the cluster) a scheduler and two workers on localhost. The single-process
run uses torch's two threads on both cores; the cluster has 2 single-thread workers
(``--cluster local:2``), so both use the whole 2-core machine. Runs alternate (single,
cluster, cluster with a worker killed) so that all see the same load from others on the
shared machine. Peak memory is the largest resident size of each process, sampled every
0.2 s; a worker's counts what it shares with the server it is forked from.

The data: the demo's clean images tiled into a SIZE x SIZE mosaic at 1 photon/px, Poisson
noise, stored as OME-Zarr (1024 px chunks); the folder holds FILES crops of TIFF_SIZE px.

    python benchmarks/bench_cluster.py --tile 1024 --tiff-size 256   # 4096^2 OME-Zarr, 32 TIFFs of 256^2
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from common import OUTPUT, default_model, report

ROOT = OUTPUT / "cluster"
MODEL = OUTPUT / "models" / "demo_1_default" / "model.pt"


def make_data(size: int, files: int, tiff_size: int) -> tuple[Path, Path]:
    from photongap.io import Image, write_image
    from photongap.sample_data import clean_at_level, load_sample_data

    image_path, folder = ROOT / f"mosaic_{size}.ome.zarr", ROOT / f"tiffs_{files}x{tiff_size}"
    if image_path.exists() and folder.exists():
        return image_path, folder
    shutil.rmtree(ROOT, ignore_errors=True)
    data = load_sample_data()
    clean = [clean_at_level(image, 1.0) for image in data.train + data.test]
    side = min(min(image.shape) for image in clean)
    tiles = [image[:side, :side] for image in clean]
    per_row = -(-size // side)
    mosaic = np.block([[tiles[(r * per_row + c) % len(tiles)] for c in range(per_row)] for r in range(per_row)])[:size, :size]
    counts = np.random.default_rng(0).poisson(mosaic).astype(np.uint16)
    like = Image(counts, "YX", image_path, pixel_sizes={"X": 0.1, "Y": 0.1}, units={"X": "µm", "Y": "µm"})
    write_image(image_path, counts, "YX", like=like)
    for i in range(files):
        row, col = divmod(i, size // tiff_size)
        crop = counts[row * tiff_size:(row + 1) * tiff_size, col * tiff_size:(col + 1) * tiff_size]
        write_image(folder / f"crop{i:02d}.tif", crop, "YX")
    return image_path, folder


def run(args: list[str], kill_after: float | None = None) -> dict:
    """Run ``photongap ARGS`` in a subprocess: wall time, exit code, peak RSS of it and of each worker; optionally SIGKILL one worker."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    started = time.perf_counter()
    process = psutil.Popen([sys.executable, "-m", "photongap.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, int] = {}
    roles: dict[int, str] = {}
    killed: list[float] = []
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.append(process.stderr.read()), daemon=True)
    reader.start()
    while process.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
            for member in tree:
                peaks[member.pid] = max(peaks.get(member.pid, 0), member.memory_info().rss)
                if member.pid not in roles:
                    # Workers forked from the fork server keep its command line: tell them apart by their parent.
                    parent = member.ppid()
                    line = " ".join(member.cmdline())
                    roles[member.pid] = ("main" if member.pid == process.pid else "tracker" if "resource_tracker" in line
                                         else "forkserver" if parent == process.pid and "forkserver" in line else "worker")
        except psutil.Error:
            pass
        elapsed = time.perf_counter() - started
        if kill_after is not None and not killed and elapsed > kill_after:
            workers = [pid for pid, role in roles.items() if role == "worker" and psutil.pid_exists(pid)]
            if workers:
                os.kill(workers[0], signal.SIGKILL)
                killed.append(round(elapsed, 1))
        time.sleep(0.2)
    reader.join()
    mib = 1 << 20
    return {
        "wall_s": round(time.perf_counter() - started, 1), "exit_code": process.returncode, "stderr_tail": stderr[0].strip().splitlines()[-1:] if stderr else [],
        "peak_rss_main_mib": round(peaks.get(process.pid, 0) / mib), "peak_rss_workers_mib": [round(v / mib) for p, v in peaks.items() if roles.get(p) == "worker"],
        "worker_killed_at_s": killed[0] if killed else None,
    }


def difference(a: Path, b: Path) -> dict:
    from photongap.io import find_images, read_image

    pairs = zip(find_images([a]), find_images([b])) if a.is_dir() and not a.name.endswith(".zarr") else [(a, b)]
    worst, scale, count = 0.0, 0.0, 0
    for left, right in pairs:
        x, y = np.asarray(read_image(left).data), np.asarray(read_image(right).data)
        worst, scale, count = max(worst, float(np.abs(x - y).max())), max(scale, float(np.abs(x).max())), count + 1
    return {"files": count, "max_abs_diff": worst, "max_value": scale, "max_rel_diff": worst / scale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--tiff-size", type=int, default=512)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--kill-at", type=float, default=0.4, help="Kill one worker at this fraction of the cluster run's wall time.")
    options = parser.parse_args()
    default_model("demo", 1.0)  # the cached benchmark model (trained if missing)
    image, folder = make_data(options.size, options.files, options.tiff_size)
    results: dict = {"model": str(MODEL), "tile": options.tile, "machine": f"{os.cpu_count()} cores, shared with other jobs",
                     "image": f"{options.size}x{options.size} uint16 OME-Zarr, 1 photon/px", "folder": f"{options.files} TIFFs of {options.tiff_size}x{options.tiff_size}"}
    common = ["--tile", options.tile, "--device", "cpu", "--overwrite"]
    for name, source in [("ome_zarr", image), ("tiffs", folder)]:
        outputs = {kind: ROOT / f"out_{name}_{kind}" / (source.name if name == "ome_zarr" else "") for kind in ("single", "cluster", "killed")}
        for path in outputs.values():
            shutil.rmtree(path if name == "tiffs" else path.parent, ignore_errors=True)
            path.parent.mkdir(parents=True, exist_ok=True)
        measured = {"load_before": os.getloadavg()[0]}
        measured["single"] = run(["denoise", MODEL, source, "-o", outputs["single"], *map(str, common)])
        measured["cluster"] = run(["denoise", MODEL, source, "-o", outputs["cluster"], "--cluster", "local:2", *map(str, common)])
        kill_after = options.kill_at * measured["cluster"]["wall_s"]
        measured["killed"] = run(["denoise", MODEL, source, "-o", outputs["killed"], "--cluster", "local:2", *map(str, common)], kill_after=kill_after)
        measured["load_after"] = os.getloadavg()[0]
        measured["cluster_vs_single"] = difference(outputs["single"], outputs["cluster"])
        measured["killed_vs_single"] = difference(outputs["single"], outputs["killed"])
        results[name] = measured
        report("bench_cluster", results)


if __name__ == "__main__":
    main()
