"""Evaluation: metrics as functions of the advanced-inspection ratio, over seeds and splits.

For each split (stratified or time-ordered) and seed: the last / a random ``test_fraction`` of products is
held out with all advanced results known; the rest (development data) keeps advanced results only on a
random ``sample_rate`` share, as in production. An ``ActiveInspector`` is fitted on the development data
for each student variant (distilled, undistilled); on the test products every rule routes the top
``ratio`` share to the teacher (batch mode), and AUROC, AUPRC, recall at a fixed false-alarm rate and the
realised cost per product are computed. Ratio 0 is the basic model alone, ratio 1 advanced-on-all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from sklearn.model_selection import train_test_split

from fabguard.active import data
from fabguard.active.estimator import RATIO_GRID, ActiveInspector
from fabguard.active.routing import CostModel, batch_count, ranks
from fabguard.active.system import Outputs
from fabguard.errors import InputError
from fabguard.outputs import atomic_path
from fabguard.params import FRACTION_OPEN, POSITIVE_INT, Instance, Interval, Options, check

METRICS = ("auroc", "auprc", "recall_at_fpr", "cost")
KEYS = ["split", "student", "rule"]
PAIRED = ("half_gap_ratio", "within_0.01_ratio", "min_cost")


def split(frame: pd.DataFrame, roles: data.Roles, kind: str, seed: int, test_fraction: float = 0.2):
    """(development, test) frames: ``stratified`` by label (seeded) or ``time``-ordered (test = latest)."""
    if kind == "stratified":
        dev, test = train_test_split(np.arange(len(frame)), test_size=test_fraction, random_state=seed,
                                     stratify=data.labels(frame, roles))
    elif kind == "time":
        if roles.time is None:
            raise InputError("a time-ordered split needs a time column (roles.time)")
        order = np.argsort(frame[roles.time].to_numpy(), kind="stable")
        cut = len(frame) - int(round(test_fraction * len(frame)))
        dev, test = order[:cut], order[cut:]
    else:
        raise InputError(f"split {kind!r} is not 'stratified' or 'time'")
    return frame.iloc[np.sort(dev)], frame.iloc[np.sort(test)]


def recall_at_fpr(y: np.ndarray, score: np.ndarray, fpr: float) -> float:
    """Share of faults caught when at most ``fpr`` of good products are flagged."""
    fprs, tprs, _ = roc_curve(y, score)
    return float(tprs[fprs <= fpr].max())


def ratio_curves(y: np.ndarray, out: Outputs, cost: CostModel, fpr: float, ratios=RATIO_GRID) -> pd.DataFrame:
    """Metrics per rule and ratio when each rule routes the top ``ratio`` share of products (batch mode).
    A rule given several score vectors (rows of a 2-D array: random draws) gets the mean metrics."""
    rows = []
    for rule, scores in out.routing.items():
        orders = [ranks(score) for score in np.atleast_2d(scores)]
        for ratio in ratios:
            k = batch_count(len(y), fraction=float(ratio))
            metrics = []
            for rank in orders:
                routed = rank < k
                final = np.where(routed, out.teacher_score, out.fault_score)
                metrics.append([roc_auc_score(y, final), average_precision_score(y, final),
                                recall_at_fpr(y, final, fpr), cost.per_product(y, final, routed)])
            rows.append({"rule": rule, "ratio": float(ratio), **dict(zip(METRICS, np.mean(metrics, axis=0)))})
    return pd.DataFrame(rows)


def evaluate_routing(frame: pd.DataFrame, roles: data.Roles, seeds, splits=("stratified", "time"),
                     sample_rate: float = 0.2, students: dict | None = None, cost: CostModel = CostModel(),
                     fpr: float = 0.05, test_fraction: float = 0.2, random_draws: int = 20, progress=None,
                     **params) -> pd.DataFrame:
    """Per-seed ratio curves for every split, student variant and rule (one row per ratio).
    ``students`` maps a name to ActiveInspector parameters (default: undistilled vs lambda 0.5, T 2);
    ``params`` are passed to every ActiveInspector; ``progress`` is called after each fit. Random routing
    is scored as the mean over ``random_draws`` random orders: its expected curve, not one lucky draw."""
    owner = "evaluate_routing"
    check("seeds", seeds, Instance((list, tuple, range)), owner=owner)
    if len(seeds) == 0:
        raise InputError("evaluate_routing: no seeds given (need at least one)")
    for kind in splits:
        check("splits", kind, Options(("stratified", "time")), owner=owner)
    check("sample_rate", sample_rate, Interval(float, 0, 1, "right"), owner=owner)
    check("fpr", fpr, FRACTION_OPEN, owner=owner)
    check("test_fraction", test_fraction, FRACTION_OPEN, owner=owner)
    check("random_draws", random_draws, POSITIVE_INT, owner=owner)
    students = students or {"undistilled": {"distill_lambda": 0.0}, "distilled": {"distill_lambda": 0.5,
                                                                                  "temperature": 2.0}}
    parts = []
    for kind in splits:
        for seed in seeds:
            dev, test = split(frame, roles, kind, seed, test_fraction)
            dev = data.mask_unsampled(dev, roles, sample_rate, np.random.default_rng(seed))
            y = data.labels(test, roles)
            for name, student in students.items():
                inspector = ActiveInspector(roles, cost=cost, random_state=seed, **{**params, **student}).fit(dev)
                out = inspector.outputs(test)
                if np.isnan(out.teacher_score).any():
                    raise InputError("some test products have no advanced results; evaluation needs them all")
                random = inspector.system_.rules["random"]
                out.routing["random"] = np.stack([random.score(out.batch) for _ in range(random_draws)])
                curves = ratio_curves(y, out, cost, fpr)
                curves["val_budget"] = curves["rule"].map(inspector.system_.best_budget)
                parts.append(curves.assign(split=kind, seed=seed, student=name))
                if progress:
                    progress()
    return pd.concat(parts, ignore_index=True)


def _first_ratio(ratio: np.ndarray, reached: np.ndarray) -> float:
    return float(ratio[np.argmax(reached)]) if reached.any() else np.nan


def per_seed_summary(curves: pd.DataFrame) -> pd.DataFrame:
    """Per split, seed, student and rule: basic and advanced-on-all AUROC, the smallest ratio that
    recovers half of the basic-to-advanced AUROC gap (NaN when advanced is not better), the smallest
    ratio within 0.01 AUROC of advanced-on-all, the minimum cost and its ratio, the test cost at the
    budget chosen on validation data, and the paired differences to random routing (same seed)."""
    rows = []
    for key, g in curves.sort_values("ratio").groupby(KEYS + ["seed"]):
        ratio, auroc, cost = g["ratio"].to_numpy(), g["auroc"].to_numpy(), g["cost"].to_numpy()
        basic, advanced = auroc[0], auroc[-1]
        gap = advanced - basic
        best = int(np.argmin(cost))
        val_budget = float(g["val_budget"].iloc[0])
        rows.append({**dict(zip(KEYS + ["seed"], key)), "basic_auroc": basic, "advanced_auroc": advanced,
                     "half_gap_ratio": _first_ratio(ratio, auroc >= basic + gap / 2) if gap > 0 else np.nan,
                     "within_0.01_ratio": _first_ratio(ratio, auroc >= advanced - 0.01),
                     "min_cost": cost[best], "min_cost_ratio": ratio[best],
                     "basic_cost": cost[0], "advanced_cost": cost[-1], "val_budget": val_budget,
                     "cost_at_val_budget": float(cost[np.argmin(np.abs(ratio - val_budget))])})
    table = pd.DataFrame(rows)
    random = table[table["rule"] == "random"].set_index(["split", "student", "seed"])
    for column in PAIRED:
        baseline = random[column].reindex(pd.MultiIndex.from_frame(table[["split", "student", "seed"]]))
        table[f"{column}_vs_random"] = table[column].to_numpy() - baseline.to_numpy()
    return table


def summarize(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and number of seeds (n) of ``per_seed_summary`` per split, student, rule."""
    per_seed = per_seed_summary(curves).drop(columns="seed")
    stats = per_seed.groupby(KEYS).agg(["mean", "std", "count"])
    stats.columns = [f"{c}_{s}".replace("_count", "_n") for c, s in stats.columns]
    return stats.reset_index()


def distillation_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Student AUROC / AUPRC alone (ratio 0), mean and sd over seeds, per split and student, and the
    paired per-seed difference distilled - undistilled."""
    alone = curves[(curves["ratio"] == 0) & (curves["rule"] == "random")]
    table = alone.groupby(["split", "student"])[["auroc", "auprc"]].agg(["mean", "std", "count"])
    table.columns = [f"{c}_{s}".replace("_count", "_n") for c, s in table.columns]
    table = table.reset_index()
    wide = alone.pivot_table(index=["split", "seed"], columns="student", values="auroc")
    if {"distilled", "undistilled"} <= set(wide.columns):
        diff = (wide["distilled"] - wide["undistilled"]).groupby("split").agg(["mean", "std"])
        distilled = table["student"] == "distilled"
        table["auroc_diff_vs_undistilled_mean"] = table["split"].map(diff["mean"]).where(distilled)
        table["auroc_diff_vs_undistilled_std"] = table["split"].map(diff["std"]).where(distilled)
    return table


def plot(curves: pd.DataFrame, path: Path, title: str, fpr: float) -> None:
    """AUROC, AUPRC, recall at the fixed false-alarm rate and cost per product against the ratio, mean over
    seeds; one row of panels per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"auroc": "AUROC", "auprc": "AUPRC", "recall_at_fpr": f"recall at FPR {fpr:g}", "cost": "cost per product"}
    mean = curves.groupby(KEYS + ["ratio"])[list(panels)].mean().reset_index()
    splits = list(mean["split"].unique())
    fig, axes = plt.subplots(len(splits), len(panels), figsize=(5 * len(panels), 4 * len(splits)), squeeze=False)
    colours = dict(zip(sorted(mean["rule"].unique()), plt.get_cmap("tab10").colors))
    for row, kind in zip(axes, splits):
        for (student, rule), g in mean[mean["split"] == kind].groupby(["student", "rule"]):
            style = "-" if student == "distilled" else "--"
            for ax, metric in zip(row, panels):
                ax.plot(g["ratio"], g[metric], style, color=colours[rule], label=f"{rule} ({student})")
        for ax, name in zip(row, panels.values()):
            ax.set_xlabel("advanced-inspection ratio")
            ax.set_ylabel(name)
            ax.set_title(f"{name}, {kind} split", fontsize=10)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=60)
    plt.close(fig)


def _markdown(table: pd.DataFrame) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def write_results(curves: pd.DataFrame, out_dir: Path, title: str, command: str, settings: dict) -> dict:
    """curves.csv.gz (per seed), curves_mean.csv, summary.csv, distillation.csv, summary.json, report.md,
    plot.png."""
    out_dir = Path(out_dir)
    summary, distill = summarize(curves), distillation_table(curves)
    mean_curves = curves.groupby(KEYS + ["ratio"])[list(METRICS)].agg(["mean", "std"])
    mean_curves.columns = [f"{c}_{s}" for c, s in mean_curves.columns]
    with atomic_path(out_dir / "curves.csv.gz") as tmp:  # full precision: the summaries can be recomputed
        curves.to_csv(tmp, index=False)
    for name, table in (("curves_mean.csv", mean_curves.reset_index()), ("summary.csv", summary),
                        ("distillation.csv", distill)):
        with atomic_path(out_dir / name) as tmp:
            table.to_csv(tmp, index=False, float_format="%.5g")
    result = {"title": title, "command": command, "settings": settings,
              "distillation": distill.to_dict(orient="records"), "summary": summary.to_dict(orient="records")}
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1, default=float))
    cols = KEYS + [f"{m}_{s}" for m in ("half_gap_ratio", "within_0.01_ratio", "min_cost", "min_cost_ratio",
                                        "cost_at_val_budget", "half_gap_ratio_vs_random",
                                        "within_0.01_ratio_vs_random", "min_cost_vs_random")
                   for s in ("mean", "std")]
    report = [f"# {title}", "", f"Command: `{command}`", "", f"Settings: `{json.dumps(settings, default=str)}`", "",
              "## Student alone (ratio 0): distilled vs undistilled", "", _markdown(distill), "",
              "## Routing rules", "", _markdown(summary[cols]), ""]
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text("\n".join(report))
    plot(curves, out_dir / "plot.png", title, settings["fpr"])
    return result
