"""PatchCore's fit time: the compiled coreset (cpp/coreset.cpp) vs the former PyTorch loop, the
coreset's ratio and projection, and the backbone's feature extraction.

On MVTec AD transistor's training patches (seed-0 split, 232-dim efficientnet-lite0 features):
selection alone at several sizes (C++ on 1 and 2 threads, the former loop where it is run), the extra
peak memory of the selection per patch (child processes, synthetic patches made from the real ones),
image and pixel AUROC per coreset ratio and projection width and seed (features extracted once, the
detector's own selection and scoring), the backbone's time per image by batch size and memory format,
and the whole ``PatchCoreDetector.fit`` with its image AUROC per seed. The former fit's numbers are
those recorded by bench/anomaly/transistor_eval.py before the compiled core (all_metrics.json). CPU
seconds are reported beside wall seconds: the 2 cores are shared, so wall time depends on the load.

    OMP_WAIT_POLICY=PASSIVE python bench/anomaly/coreset_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from fabguard import _core
from fabguard.anomaly.backbone import patch_features, patch_heatmap
from fabguard.anomaly.evaluate import operating_point
from fabguard.anomaly.images import load_dataset, split
from fabguard.anomaly.patchcore import PatchCoreDetector, greedy_coreset
from fabguard.outputs import atomic_path
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "mvtec_ad_256" / "transistor"
BEFORE_COMMIT = "5c863da"  # its all_metrics.json holds the fits with the former PyTorch selection


def former_loop(features: torch.Tensor, size: int, start: int) -> torch.Tensor:
    """fabguard's selection before the compiled core (exhaustive, |x|^2 - 2 x.c + |c|^2 in float32)."""
    m = len(features)
    sq = (features * features).sum(1)
    buffer = torch.empty(m)
    nearest = torch.mv(features, features[start]).mul_(-2).add_(sq).add_(sq[start])
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = start
    for step in range(1, size):
        index = int(torch.argmax(nearest))
        chosen[step] = index
        torch.mv(features, features[index], out=buffer)
        buffer.mul_(-2).add_(sq).add_(sq[index])
        torch.minimum(nearest, buffer, out=nearest)
    return chosen


def timed(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def training_patches(data: Path, seed: int) -> np.ndarray:
    """The patches PatchCoreDetector(seed).fit selects its coreset from (same split, same backbone)."""
    detector = PatchCoreDetector(seed=seed)
    images = load_dataset(str(data), 256, "train").images
    train, _ = split(len(images), detector.val_fraction, seed)
    scorer = detector._scorer(0, pretrained=True).eval()
    with torch.inference_mode():
        parts = [scorer.embed(torch.from_numpy(images[train][s:s + 16])) for s in range(0, len(train), 16)]
    return torch.cat([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in parts]).numpy()


def embedded(scorer, images: np.ndarray, batch: int = 16) -> torch.Tensor:
    """Patch features (N, D, h, w) of the images, as the detector's fit and scoring compute them."""
    with torch.inference_mode():
        return torch.cat([scorer.embed(torch.from_numpy(images[s:s + batch])) for s in range(0, len(images), batch)])


def configurations(data: Path, configs: list[tuple[float, int]], seeds) -> list[dict]:
    """Image and pixel AUROC of the test set per (coreset ratio, projection width; 0 = none) and seed:
    the seed's training split, ``greedy_coreset`` as ``_fit`` calls it, the scorer's distances and
    heatmaps. The features of all images are computed once (a whole fit per cell would take hours)."""
    normals, test = load_dataset(str(data), 256, "train"), load_dataset(str(data), 256, "test")
    scorer = PatchCoreDetector()._scorer(0, pretrained=True).eval()
    train_f, test_f = embedded(scorer, normals.images), embedded(scorer, test.images)
    dim = train_f.shape[1]
    rows = []
    for seed in seeds:
        detector = PatchCoreDetector(seed=seed)
        train, _ = split(len(normals), detector.val_fraction, seed)
        patches = train_f[train].permute(0, 2, 3, 1).reshape(-1, dim)
        for ratio, width in configs:
            k = max(1, round(ratio * len(patches)))
            chosen, wall, cpu = timed(greedy_coreset, patches, k, seed, projection=width or None)
            scorer.set_bank(patches[chosen].clone())
            with torch.inference_mode():
                dist = torch.cat([scorer.distances(test_f[s:s + 16]) for s in range(0, len(test_f), 16)])
                heat = patch_heatmap(dist, scorer.kernel, scorer.input_size, scorer.crop_size)
            rows.append({"seed": seed, "ratio": ratio, "projection": width, "k": k, "select_wall": wall,
                         "select_cpu": cpu, "image_auroc": float(roc_auc_score(test.labels, dist.flatten(1).amax(1))),
                         "pixel_auroc": float(roc_auc_score(test.masks.ravel(), heat.numpy().ravel())),
                         "load": round(os.getloadavg()[0], 1)})
            print(rows[-1], flush=True)
    return rows


def extraction(data: Path, batches, reps: int = 3, n: int = 64) -> list[dict]:
    """Backbone time per image of n training images by batch size, contiguous (the layout before) vs
    channels-last (``PatchCoreScorer.embed``); the variants interleaved, each the median of reps runs."""
    images = load_dataset(str(data), 256, "train").images[:n]
    scorer = PatchCoreDetector()._scorer(0, pretrained=True).eval()
    variants = {"contiguous": lambda x: patch_features(scorer.features, x, scorer.input_size, scorer.crop_size,
                                                         scorer.pool),
                "channels_last": scorer.embed}

    def run(embed, batch):
        return [embed(torch.from_numpy(images[s:s + batch])) for s in range(0, n, batch)]

    times = {(v, b): [] for v in variants for b in batches}
    with torch.inference_mode():
        for _ in range(reps + 1):  # the first round warms up and is dropped
            for (v, b), seen in times.items():
                _, wall, cpu = timed(run, variants[v], b)
                seen.append((cpu, wall, os.getloadavg()[0]))
    rows = []
    for (v, b), seen in times.items():
        cpu, wall, load = sorted(seen[1:])[reps // 2]
        rows.append({"layout": v, "batch": b, "ms_cpu": 1000 * cpu / n, "ms_wall": 1000 * wall / n,
                     "load": round(load, 1)})
        print(rows[-1], flush=True)
    return rows


def coverage(x: torch.Tensor, chosen: torch.Tensor) -> float:
    """Largest distance of a point to its nearest chosen one (float64, in blocks): the k-centre radius."""
    bank = x[chosen].double()
    worst = 0.0
    for s in range(0, len(x), 4096):
        worst = max(worst, float(torch.cdist(x[s:s + 4096].double(), bank).amin(1).max()))
    return worst


def selection(x: np.ndarray, sizes, old_sizes, ratio: float) -> list[dict]:
    rows, rng = [], np.random.default_rng(0)
    for n in sizes:
        n = n or len(x)
        sub = np.ascontiguousarray(x if n == len(x) else x[np.sort(rng.choice(len(x), n, replace=False))])
        k, row = round(ratio * n), {"patches": n}
        row["k"] = k
        for threads in (1, 2):
            chosen, row[f"cpp{threads}_wall"], row[f"cpp{threads}_cpu"] = timed(
                _core.kcenter_greedy, sub, k, 0, threads=threads)
            row[f"cpp{threads}_chosen"] = chosen
        row["threads_identical"] = bool(np.array_equal(row.pop("cpp1_chosen"), row["cpp2_chosen"]))
        if n in old_sizes or (n == len(x) and 0 in old_sizes):
            torch.set_num_threads(2)
            old, row["old_wall"], row["old_cpu"] = timed(former_loop, torch.from_numpy(sub), k, 0)
            new = torch.from_numpy(row["cpp2_chosen"])
            row["same_indices"] = bool(torch.equal(old, new))
            row["first_difference"] = int(np.argmax(old.numpy() != new.numpy())) if not row["same_indices"] else None
            row["radius_old"], row["radius_cpp"] = coverage(torch.from_numpy(sub), old), coverage(torch.from_numpy(sub), new)
        row.pop("cpp2_chosen")
        rows.append(row)
        print(row, flush=True)
    return rows


CHILD_MEMORY = """
import os, sys, threading, numpy as np
from fabguard import _core
x = np.load(sys.argv[1], mmap_mode="r")
n = int(sys.argv[2])
rng = np.random.default_rng(0)
big = np.empty((n, x.shape[1]), np.float32)
for s in range(0, n, 4096):
    rows = np.arange(s, min(n, s + 4096)) % len(x)
    big[s:s + len(rows)] = x[rows] + rng.standard_normal((len(rows), x.shape[1]), np.float32) * np.float32(0.01)
del x
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
peak, done = [rss()], threading.Event()
def sample():  # the selection runs without the GIL: this thread sees its resident memory every 2 ms
    while not done.wait(0.002):
        peak.append(max(peak[-1], rss()))
sampler = threading.Thread(target=sample)
sampler.start()
_core.kcenter_greedy(big, int(sys.argv[3]), 0, threads=2)
done.set()
sampler.join()
print(peak[0], max(peak))
"""


def memory(features_path: Path, sizes, k: int) -> list[dict]:
    """Peak resident memory the selection adds to a process that holds n patches (sampled RSS)."""
    rows = []
    for n in sizes:
        out = subprocess.run([sys.executable, "-c", CHILD_MEMORY, str(features_path), str(n), str(k)],
                             check=True, capture_output=True, text=True).stdout.split()
        before, after = int(out[0]), int(out[1])
        rows.append({"patches": n, "k": k, "features_bytes": n * 232 * 4, "extra_peak_bytes": after - before,
                     "extra_bytes_per_patch": (after - before) / n})
        print(rows[-1], flush=True)
    return rows


def one_fit(data: Path, seed: int) -> dict:
    """Fit and score in this process (a child: its peak memory is the fit's)."""
    normals, test = load_dataset(str(data), 256, "train"), load_dataset(str(data), 256, "test")
    torch.manual_seed(seed)
    detector, wall, cpu = timed(lambda: PatchCoreDetector(seed=seed).fit(normals.images))
    scores, heatmaps = detector.score(test.images)
    return {"seed": seed, "fit_wall": wall, "fit_cpu": cpu, "image_auroc": float(roc_auc_score(test.labels, scores)),
            "pixel_auroc": float(roc_auc_score(test.masks.ravel(), heatmaps.ravel())),
            "fnr_at_fpr5": operating_point(test.labels, scores)["fnr"],
            "params": {k: detector.get_params()[k] for k in ("coreset_ratio", "coreset_projection", "batch_size")},
            "load": round(os.getloadavg()[0], 1),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "bank": len(detector.model_.bank)}


def recorded_before(seeds) -> list[dict]:
    """The former fits as transistor_eval.py recorded them, read from the commit before the compiled core
    replaced the loop (the file is rewritten by every later run of that bench)."""
    runs = json.loads(subprocess.run(["git", "show", f"{BEFORE_COMMIT}:bench/results/anomaly/transistor/all_metrics.json"],
                                     cwd=REPO, check=True, capture_output=True, text=True).stdout)
    return [{"seed": r["seed"], "fit_wall": r["fit_seconds"], "image_auroc": r["image_auroc"],
             "pixel_auroc": r["pixel_auroc"], "fnr_at_fpr5": r["fnr_at_fpr5"]}
            for r in runs if r["name"] == "patchcore" and r["seed"] in seeds]


def write(out: Path, result: dict) -> None:
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    sel, mem, fits, before = result["selection"], result["memory"], result["fits"], result["fits_before"]
    lines = [
        "# PatchCore fit time on MVTec AD transistor: coreset selection, projection and ratio, feature extraction", "",
        "Commands (in order; a later one keeps the parts it did not run): "
        + ", ".join(f"`{c}`" for c in result["commands"]) + f". Machine: {result['machine']}; load average at "
        f"the start of the last run {result['load']}",
        "(the 2 cores are shared with other work: wall seconds vary with it, CPU seconds much less).", "",
        (f"Patches: the seed-0 training split's {result['patches']} patches x {result['dim']} features "
         f"(extraction {result['extract_wall']:.0f} s wall, {result['extract_cpu']:.0f} s CPU). Coreset "
         "k = 10% of the patches, start index 0, subsets drawn at random."), "",
        "## Selection alone", "",
        ("| patches | k | C++ 1 thread wall / CPU s | C++ 2 threads wall / CPU s | 1 = 2 threads | former loop "
         "(2 torch threads) wall / CPU s | CPU ratio former / C++ 1 thread | same indices | k-centre radius former / C++ |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sel:
        old = "not run" if "old_wall" not in r else f"{r['old_wall']:.1f} / {r['old_cpu']:.1f}"
        ratio = "" if "old_cpu" not in r else f"{r['old_cpu'] / r['cpp1_cpu']:.1f}"
        same = "" if "same_indices" not in r else ("yes" if r["same_indices"] else f"first {r['first_difference']} of {r['k']}")
        radius = "" if "radius_old" not in r else f"{r['radius_old']:.4f} / {r['radius_cpp']:.4f}"
        lines.append(f"| {r['patches']} | {r['k']} | {r['cpp1_wall']:.1f} / {r['cpp1_cpu']:.1f} | "
                     f"{r['cpp2_wall']:.1f} / {r['cpp2_cpu']:.1f} | {r['threads_identical']} | {old} | {ratio} | "
                     f"{same} | {radius} |")
    lines += ["", "## Extra peak memory of the selection", "",
              "Child processes holding n patches (the real ones tiled, plus noise of sd 0.01) run the selection "
              "with k = " + str(mem[0]["k"] if mem else "") + "; the largest resident size sampled every 2 ms while it "
              "runs minus the size before.", "",
              "| patches | features (MiB) | extra peak (MiB) | extra bytes per patch |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['patches']} | {r['features_bytes'] / 2**20:.0f} | {r['extra_peak_bytes'] / 2**20:.0f} | "
              f"{r['extra_bytes_per_patch']:.0f} |" for r in mem]
    lines += configuration_lines(result.get("configs", [])) + extraction_lines(result.get("extraction", []))
    lines += fit_lines(before, result.get("fits_cpp_full", []), fits)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def fit_lines(before: list[dict], cpp_full: list[dict], fits: list[dict]) -> list[str]:
    """One row per fit: the former loop (recorded), the compiled selection on all features (recorded
    here before this change), and this tree's runs, one group per parameter set."""
    groups = {"former PyTorch loop, recorded by transistor_eval.py": before,
              "C++ selection on all 232 features, contiguous batch-16 extraction (this file at 5c863da)": cpp_full}
    for r in fits:
        groups.setdefault(f"this tree, {r['params']}", []).append(r)
    lines = ["", "## Whole fit (`PatchCoreDetector(seed=s).fit` on the 213 normal images, 2 torch threads)", "",
             "Load: 1-min average after the fit; empty cells were not recorded.", "",
             ("| configuration | seed | fit wall s | fit CPU s | image AUROC | pixel AUROC | FNR at FPR 5% | "
              "peak RSS (GiB) | load |"), "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def cell(r, key, form):
        return format(r[key], form) if key in r else ""

    for name, rows in groups.items():
        for r in rows:
            rss = f"{r['peak_rss_bytes'] / 2**30:.2f}" if "peak_rss_bytes" in r else ""
            lines.append(f"| {name} | {r['seed']} | {cell(r, 'fit_wall', '.1f')} | {cell(r, 'fit_cpu', '.1f')} | "
                         f"{cell(r, 'image_auroc', '.4f')} | {cell(r, 'pixel_auroc', '.4f')} | "
                         f"{cell(r, 'fnr_at_fpr5', '.3f')} | {rss} | {r.get('load', '')} |")
    lines.append("")
    for name, rows in groups.items():
        image = [r["image_auroc"] for r in rows]
        cpu = [r["fit_cpu"] for r in rows if "fit_cpu" in r]
        lines.append(f"* {name}: image AUROC {np.mean(image):.4f} ± {np.std(image, ddof=1):.4f}, fit median "
                     f"{np.median([r['fit_wall'] for r in rows]):.1f} s wall"
                     + (f", {np.median(cpu):.1f} s CPU" if cpu else "") + ".")
    return lines


def configuration_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["", "## Coreset ratio and projection (features extracted once; image AUROC / pixel AUROC per seed)", "",
             ("Projection: the seeded Gaussian `random_projection` the selection runs on (0 = the 232 features); "
              "the bank always holds the full features."), "",
             "| ratio | projection | k (seed 0) | selection CPU s, median | " + " | ".join(
                 f"seed {s}" for s in sorted({r['seed'] for r in rows})) + " | image AUROC mean ± sd | "
             "pixel AUROC mean ± sd |"]
    seeds = sorted({r["seed"] for r in rows})
    lines.append("| --- " * (6 + len(seeds)) + "|")
    for ratio, width in dict.fromkeys((r["ratio"], r["projection"]) for r in rows):
        cell = [r for r in rows if (r["ratio"], r["projection"]) == (ratio, width)]
        by_seed = {r["seed"]: r for r in cell}
        image, pixel = [r["image_auroc"] for r in cell], [r["pixel_auroc"] for r in cell]
        sd = (lambda v: f" ± {np.std(v, ddof=1):.4f}" if len(v) > 1 else "")
        lines.append(f"| {ratio:g} | {width} | {cell[0]['k']} | {np.median([r['select_cpu'] for r in cell]):.1f} | "
                     + " | ".join(f"{by_seed[s]['image_auroc']:.4f} / {by_seed[s]['pixel_auroc']:.4f}"
                                  if s in by_seed else "" for s in seeds)
                     + f" | {np.mean(image):.4f}{sd(image)} | {np.mean(pixel):.4f}{sd(pixel)} |")
    return lines


def extraction_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["", "## Feature extraction (backbone + pooling, 64 training images, 2 torch threads, median of 3)", "",
             "| layout | batch | CPU ms / image | wall ms / image | load |", "| --- | --- | --- | --- | --- |"]
    return lines + [f"| {r['layout']} | {r['batch']} | {r['ms_cpu']:.1f} | {r['ms_wall']:.1f} | {r['load']} |"
                    for r in rows]


def config(text: str) -> tuple[float, int]:
    """``--configs`` item "0.1:128" -> (0.1, 128)."""
    ratio, _, width = text.partition(":")
    try:
        return float(ratio), int(width or 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected RATIO:PROJECTION such as 0.1:128, got {text!r}") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--work", default=str(REPO / "out" / "anomaly" / "coreset"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "anomaly" / "coreset_speed"))
    parser.add_argument("--sizes", nargs="*", type=int, default=[10000, 40000, 0], help="patches; 0 = all")
    parser.add_argument("--old-sizes", nargs="+", type=int, default=[10000, 40000],
                        help="sizes the former loop also runs at (0 = all: about 10 CPU minutes)")
    parser.add_argument("--memory-sizes", nargs="*", type=int, default=[133280, 266560, 533120])
    parser.add_argument("--configs", nargs="*", type=config, default=[(0.1, 0), (0.1, 128), (0.1, 64), (0.1, 32),
                                                                         (0.05, 0), (0.05, 64), (0.01, 0), (0.01, 128),
                                                                         (0.01, 64)],
                        help="RATIO:PROJECTION pairs for the ratio / projection table (projection 0 = none)")
    parser.add_argument("--config-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--extraction", nargs="*", type=int, default=[4, 8, 16, 32], help="batch sizes")
    parser.add_argument("--fit-seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--seed", type=int, default=0, help="seed of the training split whose patches are used")
    parser.add_argument("--one-fit", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_fit is not None:
        print(json.dumps(one_fit(Path(args.data), args.one_fit)))
        return 0
    torch.set_num_threads(2)
    load = os.getloadavg()[0]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    x, extract_wall, extract_cpu = timed(lambda: training_patches(Path(args.data), args.seed))
    np.save(work / "patches.npy", x)
    # Parts not run this time (an empty --sizes, --memory-sizes or --fit-seeds) keep their earlier results.
    earlier = Path(args.out).with_suffix(".json")
    result = json.loads(earlier.read_text()) if earlier.is_file() else {"selection": [], "memory": [], "fits": []}
    result.update({"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
                   "load": round(load, 1), "patches": len(x), "dim": x.shape[1],
                   "extract_wall": extract_wall, "extract_cpu": extract_cpu})
    if args.sizes:
        result["selection"] = selection(x, args.sizes, args.old_sizes, 0.1)
    if args.memory_sizes:
        result["memory"] = memory(work / "patches.npy", args.memory_sizes, 1000)
    if args.configs:
        result["configs"] = configurations(Path(args.data), args.configs, args.config_seeds)
    if args.extraction:
        result["extraction"] = extraction(Path(args.data), args.extraction)
    if args.fit_seeds:
        # fits of other parameter sets stay (the table compares them); this run's replace their own
        params = PatchCoreDetector().get_params()
        result["fits"] = [r for r in result.get("fits", []) if any(params[k] != v for k, v in r["params"].items())]
        for seed in args.fit_seeds:
            out = subprocess.run([sys.executable, __file__, "--data", args.data, "--one-fit", str(seed)],
                                 check=True, capture_output=True, text=True).stdout
            result["fits"].append(json.loads(out.strip().splitlines()[-1]))
            print(result["fits"][-1], flush=True)
        result["fits_before"] = recorded_before(args.fit_seeds)
    command = "OMP_WAIT_POLICY=PASSIVE python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    result["commands"] = result.get("commands", []) + [command]
    write(Path(args.out), result)
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
