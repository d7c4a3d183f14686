"""``fabguard anomaly train | evaluate | export | inspect | synthetic``.

Heavy imports (torch, onnxruntime) happen inside the command functions so that help stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fabguard.errors import InputError

MODELS = ("pca", "vae", "patchcore")


def _seed(args) -> None:
    import numpy as np
    import torch

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="fit a detector on normal images and save it",
                              description="Fit a detector on the normal images of DATA (MVTec train/good or a "
                                          "plain folder), calibrate its thresholds and save it.")
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--data", required=True, help="MVTec-layout dataset folder, or a folder of normal images")
    p.add_argument("--out", required=True, help="model file to write (.pt)")
    p.add_argument("--size", type=int, default=256, help="model input size in pixels (default 256)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of normal images held out (default 0.2)")
    p.add_argument("--review-quantile", type=float, default=0.95,
                   help="REVIEW above this quantile of validation scores (target false-alarm rate 1 - q)")
    p.add_argument("--reject-quantile", type=float, default=0.995, help="REJECT above this quantile")
    p.add_argument("--components", type=int, default=50, help="pca: number of components (default 50)")
    p.add_argument("--epochs", type=int, default=50, help="vae: maximum epochs (default 50)")
    p.add_argument("--beta", type=float, default=1.0, help="vae: KL weight after annealing (default 1)")
    p.add_argument("--batch-size", type=int, default=32, help="vae: batch size (default 32)")
    p.add_argument("--patience", type=int, default=10, help="vae: early-stopping patience in epochs (default 10)")
    p.add_argument("--augment", choices=("none", "wafer", "component"), default="none",
                   help="vae: training augmentation preset (default none; see docs/anomaly.md)")
    p.add_argument("--coreset-ratio", type=float, default=0.1, help="patchcore: memory bank share (default 0.1)")
    p.add_argument("--crop", type=int, default=224, help="patchcore: centre crop size, 0 = none (default 224)")
    p.add_argument("--layers", default="4,14", help="patchcore: backbone blocks (default 4,14)")
    _add_common(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("evaluate", help="metrics, plots and error gallery on a labelled test set",
                              description="Evaluate saved detectors on the test set of an MVTec-layout dataset; "
                                          "writes OUT/<model>/ (metrics.json, scores.csv, plots) and a "
                                          "comparison table OUT/comparison.md.")
    p.add_argument("--model", action="append", required=True, help="model file (.pt); repeat to compare")
    p.add_argument("--data", required=True, help="MVTec-layout dataset folder (test/, ground_truth/, train/good)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--gallery", type=int, default=6, help="images per error gallery (default 6)")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("export", help="export a detector to ONNX (and optionally a TensorRT engine)",
                              description="Export a saved detector to ONNX (preprocessing and scoring inside, "
                                          "dynamic batch, metadata embedded) and check ONNX Runtime against PyTorch.")
    p.add_argument("--model", required=True, help="model file (.pt)")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--tensorrt", metavar="ENGINE", help="also build a TensorRT engine (needs tensorrt and a GPU)")
    p.add_argument("--no-fp16", action="store_true", help="TensorRT engine in FP32 only")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed (default 1e-4)")
    _add_common(p)
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("inspect", help="score image files with an exported artifact",
                              description="Score images (files, or folders of images) with an ONNX artifact; "
                                          "prints path, score and PASS / REVIEW / REJECT per image.")
    p.add_argument("--artifact", required=True, help="ONNX file written by `fabguard anomaly export`")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", help="also write the results to this CSV file")
    p.add_argument("--heatmaps", help="also write the heatmaps to this .npz file (one array per image)")
    p.add_argument("--provider", action="append", help="ONNX Runtime provider to use (default: best available)")
    _add_common(p)
    p.set_defaults(func=cmd_inspect)

    p = subparsers.add_parser("synthetic", help="write a synthetic wafer-like dataset to try the commands",
                              description="Write an MVTec-layout dataset of synthetic wafer-like textures with "
                                          "injected scratches and particles (and their masks).")
    p.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    p.add_argument("--size", type=int, default=128, help="image size (default 128)")
    p.add_argument("--train", type=int, default=60, help="normal training images (default 60)")
    _add_common(p)
    p.set_defaults(func=cmd_synthetic)


def make_detector(args):
    from fabguard.anomaly.patchcore import PatchCoreDetector
    from fabguard.anomaly.pca import PCADetector
    from fabguard.anomaly.vae import VAEDetector

    common = dict(input_size=args.size, val_fraction=args.val_fraction, review_quantile=args.review_quantile,
                  reject_quantile=args.reject_quantile, seed=args.seed)
    if args.model == "pca":
        return PCADetector(n_components=args.components, **common)
    if args.model == "vae":
        return VAEDetector(epochs=args.epochs, beta=args.beta, batch_size=args.batch_size, patience=args.patience,
                           augment=args.augment, **common)
    try:
        layers = tuple(int(v) for v in args.layers.split(","))
    except ValueError:
        raise InputError(f"--layers: expected comma-separated block numbers, got {args.layers!r}") from None
    return PatchCoreDetector(layers=layers, crop_size=args.crop or None, coreset_ratio=args.coreset_ratio, **common)


def cmd_train(args) -> int:
    from fabguard.anomaly.images import load_dataset
    from fabguard.anomaly.plots import loss_curves

    _seed(args)
    out = Path(args.out)
    normals = load_dataset(args.data, args.size, "train", progress=not args.quiet)
    detector = make_detector(args).fit(normals.images, progress=not args.quiet)
    detector.save(out)
    t = detector.thresholds_
    print(f"{detector.kind}: trained on {detector.n_train_} images, thresholds from {detector.n_val_} validation "
          f"images: REVIEW > {t.review:.6g}, REJECT > {t.reject:.6g}; data fingerprint {detector.fingerprint_}")
    if detector.kind == "vae":
        loss_curves(detector.history_, out.with_name(out.stem + "_loss.png"))
        print(f"best epoch {detector.best_epoch_} of {len(detector.history_)}; loss curves "
              f"{out.with_name(out.stem + '_loss.png')}")
    print(f"saved {out}")
    return 0


def cmd_evaluate(args) -> int:
    from fabguard.anomaly.base import Detector
    from fabguard.anomaly.evaluate import comparison_table, evaluate, write_comparison
    from fabguard.anomaly.images import load_dataset

    _seed(args)
    detectors = [(Path(m).stem, Detector.load(m)) for m in args.model]
    names = [n for n, _ in detectors]
    if len(set(names)) != len(names):
        raise InputError(f"model file names must differ (they name the output folders): {names}")
    sizes = {d.input_size for _, d in detectors}
    data = {s: (load_dataset(args.data, s, "test", progress=not args.quiet),
                load_dataset(args.data, s, "train", progress=not args.quiet)) for s in sizes}
    results = []
    for name, detector in detectors:
        test, normals = data[detector.input_size]
        results.append(evaluate(detector, test, Path(args.out) / name, name, normals, args.gallery,
                                progress=not args.quiet))
    write_comparison(results, args.out, note=f"Data: {args.data}")
    print(comparison_table(results)[0], end="")
    print(f"results in {args.out}")
    return 0


def cmd_export(args) -> int:
    import numpy as np

    from fabguard.anomaly.base import Detector
    from fabguard.anomaly.export import export_onnx, parity

    _seed(args)
    detector = Detector.load(args.model)
    path = export_onnx(detector, args.out, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    check = rng.random((3, 3, detector.input_size, detector.input_size), dtype=np.float32)
    diff = parity(detector, path, check)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); ONNX Runtime vs PyTorch on 3 random images: "
          f"max |score diff| {diff['max_abs_diff_score']:.2e}, max |heatmap diff| {diff['max_abs_diff_heatmap']:.2e}")
    worst = max(diff["max_abs_diff_score"], diff["max_abs_diff_heatmap"])
    if worst > args.tolerance:
        path.unlink()
        print(f"fabguard: error: difference {worst:.2e} exceeds --tolerance {args.tolerance:g}; export removed",
              file=sys.stderr)
        return 1
    if args.tensorrt:
        from fabguard.anomaly.tensorrt import build_engine

        print(build_engine(path, args.tensorrt, fp16=not args.no_fp16))
    return 0


def cmd_inspect(args) -> int:
    import numpy as np

    from fabguard.anomaly.images import list_images
    from fabguard.anomaly.inspector import Inspector
    from fabguard.outputs import atomic_path

    _seed(args)
    files = []
    for item in map(Path, args.images):
        files.extend(list_images(item) if item.is_dir() else [item])
    inspector = Inspector(args.artifact, providers=args.provider)
    result = inspector.inspect(files)
    lines = ["path,score,decision"] + [f"{f},{s:.6g},{d}" for f, s, d in zip(files, result.scores, result.decisions)]
    print(f"# {inspector.metadata['model']} model, provider {inspector.providers[0]}", file=sys.stderr)
    print("\n".join(lines))
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
    if args.heatmaps:
        with atomic_path(args.heatmaps) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **{f"{i:05d}_{f.name}": h for i, (f, h) in enumerate(zip(files, result.heatmaps))})
    return 0


def cmd_synthetic(args) -> int:
    from fabguard.anomaly.synthetic import make_dataset

    root = make_dataset(args.out, size=args.size, n_train=args.train, seed=args.seed)
    print(f"wrote a synthetic dataset to {root}")
    return 0
