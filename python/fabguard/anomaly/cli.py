"""``fabguard anomaly train | evaluate | export | inspect | benchmark | score | synthetic``.

Heavy imports (torch, onnxruntime) happen inside the command functions so that help stays fast. The
``--model`` choices of ``train`` come from :mod:`fabguard.registry`, and each detector's own flags
(its ``cli_options``) are added when ``train`` is parsed, so a new detector needs no change here. Every
output path is checked before the work starts, and every value before data is loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fabguard import registry
from fabguard.cli import add_seed, typed
from fabguard.errors import InputError, InvalidParameterError
from fabguard.params import POSITIVE_INT, Interval

# the common detector parameters and their flags (each detector adds its own, see Detector.cli_options)
COMMON_FLAGS = {"input_size": "--size", "val_fraction": "--val-fraction", "review_quantile": "--review-quantile",
                "reject_quantile": "--reject-quantile", "seed": "--seed"}



DEFAULT_DETECTOR = "feature-vae"

def _seed(args) -> None:
    import numpy as np
    import torch

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_seed(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="fit a detector on normal images and save it",
                              description="Fit a detector on the normal images of DATA (MVTec train/good or a "
                                          "plain folder), calibrate its thresholds and save it.")
    # the default: the detector that met the case study's targets on MVTec transistor over 5 seeds
    # (docs/anomaly.md, "Measured results: MVTec AD transistor")
    p.add_argument("--model", choices=registry.available("detector"), default=DEFAULT_DETECTOR,
                   help=f"detector (default {DEFAULT_DETECTOR})")
    p.add_argument("--data", required=True, help="MVTec-layout dataset folder, or a folder of normal images")
    p.add_argument("--out", required=True, help="model file to write (.pt)")
    p.add_argument("--size", type=int, default=256, help="model input size in pixels (default 256)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of normal images held out (default 0.2)")
    p.add_argument("--review-quantile", type=float, default=0.95,
                   help="REVIEW above this quantile of validation scores (target false-alarm rate 1 - q)")
    p.add_argument("--reject-quantile", type=float, default=0.995, help="REJECT above this quantile")
    _add_common(p)
    _add_detector_flags_when_parsed(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("evaluate", help="metrics, plots and error gallery on a labelled test set",
                              description="Evaluate saved detectors on the test set of an MVTec-layout dataset; "
                                          "writes OUT/<model>/ (metrics.json, scores.csv, plots) and a "
                                          "comparison table OUT/comparison.md. OUT appears whole when all is "
                                          "done, replacing an earlier evaluation folder there.")
    p.add_argument("--model", action="append", required=True, help="model file (.pt); repeat to compare")
    p.add_argument("--data", required=True,
                   help="MVTec-layout dataset folder (test/<type>/, ground_truth/ masks optional, train/good for "
                        "the galleries' references) or a CSV of path,label[,defect_type] (label 0 normal, 1 "
                        "defective); without masks the pixel metrics are reported as not available")
    p.add_argument("--out", required=True, help="output folder (new, or an earlier evaluation's)")
    p.add_argument("--normals", help="folder of normal images for the galleries' nearest-normal references "
                                     "(PatchCore, feature VAE); default: train/good of an MVTec-layout --data")
    p.add_argument("--gallery", type=typed(int, POSITIVE_INT), default=6, help="images per error gallery (default 6)")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("export", help="export a detector to ONNX (and optionally a TensorRT engine)",
                              description="Export a saved detector to ONNX (preprocessing and scoring inside, "
                                          "dynamic batch, metadata embedded) and check ONNX Runtime against "
                                          "PyTorch; the file is written only if they agree.")
    p.add_argument("--model", required=True, help="model file (.pt)")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--tensorrt", metavar="ENGINE", help="also build a TensorRT engine (needs tensorrt and a GPU)")
    p.add_argument("--no-fp16", action="store_true", help="TensorRT engine in FP32 only")
    p.add_argument("--triton", metavar="REPO_DIR", help="also write a Triton model repository (REPO_DIR/<name>/"
                                                        "config.pbtxt and <name>/<version>/model.onnx or .plan)")
    p.add_argument("--triton-name", help="model name in the Triton repository (default: the ONNX file's name)")
    p.add_argument("--triton-version", type=typed(int, POSITIVE_INT), default=1, help="model version (default 1)")
    p.add_argument("--triton-platform", choices=("onnxruntime_onnx", "tensorrt_plan"), default="onnxruntime_onnx",
                   help="Triton backend: ONNX Runtime on model.onnx (default) or TensorRT on the engine of "
                        "--tensorrt (model.plan)")
    p.add_argument("--tolerance", type=typed(float, Interval(float, 0, None, "neither")), default=1e-4,
                   help="max difference allowed, relative to an output's largest magnitude where that exceeds 1 "
                        "(default 1e-4)")
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

    p = subparsers.add_parser("benchmark", help="latency, throughput, size and memory of an artifact here",
                              description="Measure an exported artifact on this machine: mean / P50 / P99 latency "
                                          "per image and throughput per batch size, model size and peak memory, "
                                          "per provider (each in a fresh process); prints a table.")
    p.add_argument("--artifact", required=True, help="ONNX file written by `fabguard anomaly export`")
    p.add_argument("--provider", action="append", choices=("cpu", "cuda", "tensorrt", "tensorrt-fp16"),
                   help="provider to measure; repeat for several (default: every one this onnxruntime has)")
    p.add_argument("--batch", default="1,8,32,64", help="batch sizes, comma separated (default 1,8,32,64)")
    p.add_argument("--runs", type=typed(int, POSITIVE_INT), default=100, help="timed runs per batch size (default 100)")
    p.add_argument("--warmup", type=typed(int, POSITIVE_INT), default=3,
                   help="untimed runs before them (default 3; the first builds a TensorRT engine)")
    p.add_argument("--threads", type=typed(int, POSITIVE_INT), help="CPU threads (default: ONNX Runtime's)")
    p.add_argument("--json", help="also write the results to this JSON file")
    _add_common(p)
    p.set_defaults(func=cmd_benchmark)

    p = subparsers.add_parser("score", help="score a folder tree or archive of images into Parquet (resumable)",
                              description="Score every image of folder trees, image files and zip / tar archives "
                                          "with an ONNX artifact, streaming in chunks with parallel decoding; "
                                          "writes a folder of Parquet parts (path, score, decision, error, "
                                          "optional heatmap statistics), one part per chunk, each written whole. "
                                          "Run again after an interruption: paths already scored are skipped.")
    p.add_argument("--artifact", required=True, help="ONNX file written by `fabguard anomaly export`")
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or .zip / .tar archives")
    p.add_argument("--out", required=True, help="output folder of Parquet parts (pandas.read_parquet reads it)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process; ray: Ray Data actors, one runtime session each (default local)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: a running one, else a local one)")
    p.add_argument("--chunk", type=typed(int, POSITIVE_INT), default=256, help="images per part file (default 256)")
    p.add_argument("--workers", type=typed(int, POSITIVE_INT),
                   help="decoding threads (local) or Ray actors (ray); default: one per CPU")
    p.add_argument("--threads", type=typed(int, POSITIVE_INT),
                   help="ONNX Runtime threads per session (default: ONNX Runtime's; 1 per Ray actor)")
    p.add_argument("--provider", action="append", help="ONNX Runtime provider to use (default: best available)")
    p.add_argument("--heatmap-stats", action="store_true", help="add heatmap_max, heatmap_mean, heatmap_p99")
    _add_common(p)
    p.set_defaults(func=cmd_score)

    p = subparsers.add_parser("synthetic", help="write a synthetic wafer-like dataset to try the commands",
                              description="Write an MVTec-layout dataset of synthetic wafer-like textures with "
                                          "injected scratches and particles (and their masks).")
    p.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    p.add_argument("--size", type=typed(int, Interval(int, 16, None)), default=128, help="image size (default 128)")
    p.add_argument("--train", type=typed(int, POSITIVE_INT), default=60, help="normal training images (default 60)")
    _add_common(p)
    p.set_defaults(func=cmd_synthetic)

    from fabguard.serve import retrain

    retrain.register(subparsers)  # the inspection service's retraining pipeline (docs/serve.md)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _detector_flags() -> dict[str, list[tuple[str, str]]]:
    """flag -> [(detector name, parameter)] over every registered detector (imports them)."""
    flags: dict[str, list[tuple[str, str]]] = {}
    for name in registry.available("detector"):
        for param, option in registry.get("detector", name).cli_options.items():
            flags.setdefault(option.flag, []).append((name, param))
    return flags


def _add_detector_flags_when_parsed(parser: argparse.ArgumentParser) -> None:
    """Add every registered detector's flags to ``train`` when it is parsed (``--help`` included), not when
    the parser is built: that imports the detectors, hence torch, which ``fabguard anomaly --help`` avoids.
    Detectors that declare the same flag share it (the first one's parsing; every one's help)."""
    parse = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        if not getattr(parser, "_detector_flags_added", False):
            parser._detector_flags_added = True
            group = parser.add_argument_group("detector options (each applies to the models named in its help)")
            for flag, users in _detector_flags().items():
                options = [registry.get("detector", name).cli_options[param] for name, param in users]
                group.add_argument(flag, dest=_dest(flag), type=options[0].parse, choices=options[0].choices,
                                   default=argparse.SUPPRESS, help="; ".join(o.help for o in options))
        return parse(args, namespace)

    parser.parse_known_args = parse_known_args


def make_detector(args):
    """The detector ``args.model`` with the common parameters and its own flags' values (others refused)."""
    cls = registry.get("detector", args.model)
    params = {"input_size": args.size, "val_fraction": args.val_fraction, "review_quantile": args.review_quantile,
              "reject_quantile": args.reject_quantile, "seed": args.seed}
    flags = dict(COMMON_FLAGS)
    for flag, users in _detector_flags().items():
        given = hasattr(args, _dest(flag))  # absent unless given: a flag may set None (--crop 0)
        mine = [param for name, param in users if name == args.model]
        if given and not mine:
            raise InputError(f"{flag} is an option of the {', '.join(n for n, _ in users)} detector, not of "
                             f"{args.model}")
        if mine:
            flags[mine[0]] = flag
            if given:
                params[mine[0]] = getattr(args, _dest(flag))
    detector = cls(**params)
    try:
        return detector.check_params()
    except InvalidParameterError as exc:
        param = next((p for p in flags if f"'{p}' parameter" in str(exc)), None)
        raise InvalidParameterError(f"{flags[param]}: {exc}" if param else str(exc)) from None


def cmd_train(args) -> int:
    from fabguard.anomaly.images import dataset_entries, load_dataset
    from fabguard.anomaly.plots import loss_curves
    from fabguard.outputs import check_output

    _seed(args)
    detector = make_detector(args)
    out = check_output(args.out, "model file", inputs=[args.data])
    loss_path = check_output(out.with_name(out.stem + "_loss.png"), "loss curve file", inputs=[args.data])
    detector.check_memory(len(dataset_entries(args.data, "train")))
    normals = load_dataset(args.data, args.size, "train", progress=not args.quiet)
    detector.fit(normals.images, progress=not args.quiet)
    detector.save(out)
    t = detector.thresholds_
    print(f"{detector.kind}: trained on {detector.n_train_} images, thresholds from {detector.n_val_} validation "
          f"images: REVIEW > {t.review:.6g}, REJECT > {t.reject:.6g}; data fingerprint {detector.fingerprint_}")
    if detector.describe_training():
        print(detector.describe_training())
    if getattr(detector, "history_", None):
        loss_curves(detector.history_, loss_path, detector.loss_label)
        print(f"loss curves {loss_path}")
    print(f"saved {out}")
    return 0


def cmd_evaluate(args) -> int:
    from fabguard.anomaly.base import Detector
    from fabguard.anomaly.evaluate import NO_MASKS, comparison_table, evaluate, labelled_entries, load_labelled, \
        write_comparison
    import numpy as np

    from fabguard.anomaly.images import NORMAL, list_images, load_dataset
    from fabguard.outputs import atomic_dir, check_output

    _seed(args)
    names = [Path(m).stem for m in args.model]
    if len(set(names)) != len(names):
        raise InputError(f"model file names must differ (they name the output folders): {names}")
    out = check_output(args.out, "output folder", inputs=[args.data, *args.model], folder=True)
    if out.is_dir() and any(out.iterdir()) and not (out / "all_metrics.json").is_file():
        raise InputError(f"output folder {out}: exists and is not an earlier evaluation (no all_metrics.json); "
                         "it would be replaced, so choose a new folder")
    _, has_masks = labelled_entries(args.data)  # the whole test set is checked before any model is loaded
    normals = args.normals or (Path(args.data) / "train" / NORMAL if Path(args.data).is_dir() else None)
    if args.normals:
        list_images(Path(args.normals))
    detectors = [(name, Detector.load(m)) for name, m in zip(names, args.model)]
    sizes = {d.input_size for _, d in detectors}
    if normals is None or not Path(normals).is_dir():
        normals = None
        for name, detector in detectors:  # a detector whose gallery reference needs normals refuses at once
            try:
                detector.reference(np.zeros((1, 3, detector.input_size, detector.input_size), np.float32), None)
            except InputError as exc:
                raise InputError(f"{name}: {exc}; give --normals FOLDER (e.g. its training images)") from None
    data = {s: (load_labelled(args.data, s, progress=not args.quiet),
                None if normals is None else load_dataset(normals, s, "train", progress=not args.quiet))
            for s in sizes}
    results = []
    with atomic_dir(out) as tmp:
        for name, detector in detectors:
            test, normals = data[detector.input_size]
            results.append(evaluate(detector, test, tmp / name, name, normals, args.gallery, progress=not args.quiet))
        write_comparison(results, tmp, note=f"Data: {args.data}")
    print(comparison_table(results)[0], end="")
    if not has_masks:
        print(f"pixel metrics {NO_MASKS}")
    print(f"results in {out}")
    return 0


def cmd_export(args) -> int:
    import numpy as np

    from fabguard.anomaly.base import Detector
    from fabguard.anomaly.export import export_onnx, parity
    from fabguard.outputs import atomic_path, check_output

    _seed(args)
    out = check_output(args.out, "ONNX file", inputs=[args.model])
    if args.tensorrt:
        check_output(args.tensorrt, "TensorRT engine file", inputs=[args.model, args.out])
    if args.triton:
        from fabguard.anomaly.triton import check_repository

        if args.triton_platform == "tensorrt_plan" and not args.tensorrt:
            raise InputError("--triton-platform tensorrt_plan serves the TensorRT engine: also give --tensorrt ENGINE")
        check_repository(args.triton, args.triton_name or out.stem, inputs=[args.model])
    detector = Detector.load(args.model)
    rng = np.random.default_rng(args.seed)
    check = rng.random((3, 3, detector.input_size, detector.input_size), dtype=np.float32)
    with atomic_path(out) as tmp:  # the file appears only if ONNX Runtime agrees with PyTorch
        diff = parity(detector, export_onnx(detector, tmp, seed=args.seed), check)
        worst = max(diff[f"max_abs_diff_{k}"] / max(1.0, diff[f"max_abs_{k}"])  # float32 error grows with the value
                    for k in ("score", "heatmap", "latent") if f"max_abs_diff_{k}" in diff)
        if worst > args.tolerance:
            raise InputError(f"ONNX Runtime vs PyTorch difference {worst:.2e} exceeds --tolerance "
                             f"{args.tolerance:g}; {out} not written")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); ONNX Runtime vs PyTorch on 3 random images: "
          f"max |score diff| {diff['max_abs_diff_score']:.2e}, max |heatmap diff| {diff['max_abs_diff_heatmap']:.2e}"
          + (f", max |latent diff| {diff['max_abs_diff_latent']:.2e}" if "max_abs_diff_latent" in diff else ""))
    if args.tensorrt:
        from fabguard.anomaly.tensorrt import build_engine

        print(build_engine(out, args.tensorrt, fp16=not args.no_fp16))
    if args.triton:
        from fabguard.anomaly.triton import write_repository

        plan = args.tensorrt if args.triton_platform == "tensorrt_plan" else None
        folder = write_repository(out, args.triton, args.triton_name, args.triton_version, args.triton_platform, plan)
        print(f"wrote Triton model {folder}")
    return 0


def cmd_inspect(args) -> int:
    import numpy as np

    from fabguard.anomaly.images import list_images
    from fabguard.anomaly.runtime import Inspector
    from fabguard.outputs import atomic_path, check_output

    _seed(args)
    for option in ("out", "heatmaps"):
        if getattr(args, option):
            check_output(getattr(args, option), f"--{option} file", inputs=[args.artifact, *args.images])
    if args.out and args.heatmaps and Path(args.out).resolve() == Path(args.heatmaps).resolve():
        raise InputError(f"--out and --heatmaps are the same file {args.out}")
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


def cmd_benchmark(args) -> int:
    from fabguard.anomaly.benchmark import benchmark, parse_batches, table, write_json
    from fabguard.outputs import check_output

    batches = parse_batches(args.batch)
    if args.json:
        check_output(args.json, "--json file", inputs=[args.artifact])
    report = benchmark(args.artifact, args.provider, batches, args.runs, args.warmup, args.seed, args.threads)
    print(table(report), end="")
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_score(args) -> int:
    from fabguard.anomaly.batch_score import score_archive

    counts = score_archive(args.artifact, args.images, args.out, args.engine, args.chunk, args.workers, args.threads,
                           args.provider, args.heatmap_stats, progress=not args.quiet, ray_address=args.ray_address)
    print(f"{counts['images']} images: {counts['skipped']} already in {args.out}, {counts['scored']} scored into "
          f"{counts['parts']} new part(s), {counts['errors']} could not be decoded (decision ERROR)")
    return 0


def cmd_synthetic(args) -> int:
    from fabguard.anomaly.synthetic import make_dataset

    root = make_dataset(args.out, size=args.size, n_train=args.train, seed=args.seed)
    print(f"wrote a synthetic dataset to {root}")
    return 0
