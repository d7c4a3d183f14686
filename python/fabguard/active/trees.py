"""A fitted HistGradientBoostingClassifier as an ONNX graph (``ai.onnx.ml`` TreeEnsembleRegressor), so a
gradient-boosting teacher is saved as data like the networks, without pickle and without skl2onnx.

The graph maps float32 features ``(batch, n)`` to the raw score (logit) ``(batch, 1)``: the baseline plus
the leaf values of every tree. scikit-learn sends a row left when ``x <= threshold`` in float64; for a
float32 ``x`` that is the same test as ``x <= t``, with ``t`` the largest float32 not above the float64
threshold, so every row reaches the same leaves in both. Only the sum of leaf values differs, by float32
rounding (:func:`fabguard.runtime.parity.float32_bound` with depth = trees + 1).
"""

from __future__ import annotations

import numpy as np

from fabguard.errors import InputError


def float32_floor(values: np.ndarray) -> np.ndarray:
    """The largest float32 not above each float64 value."""
    values = np.asarray(values, dtype=np.float64)
    down = values.astype(np.float32)
    return np.where(down.astype(np.float64) > values, np.nextafter(down, np.float32(-np.inf)), down)


def tree_graph(model, n_features: int):
    """The ONNX ``ModelProto`` of a fitted binary ``HistGradientBoostingClassifier``."""
    from onnx import TensorProto, helper

    if getattr(model, "n_trees_per_iteration_", 1) != 1:
        raise InputError("only a binary gradient-boosting classifier can be exported")
    attrs = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes",
                             "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
                             "target_treeids", "target_nodeids", "target_ids", "target_weights")}
    for tree, (predictor,) in enumerate(model._predictors):
        nodes = predictor.nodes
        if nodes["is_categorical"].any():
            raise InputError("a gradient-boosting teacher with categorical splits cannot be exported")
        thresholds = float32_floor(nodes["num_threshold"])
        for i, node in enumerate(nodes):
            leaf = bool(node["is_leaf"])
            attrs["nodes_treeids"].append(tree)
            attrs["nodes_nodeids"].append(i)
            attrs["nodes_featureids"].append(int(node["feature_idx"]))
            attrs["nodes_values"].append(float(thresholds[i]))
            attrs["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            attrs["nodes_truenodeids"].append(0 if leaf else int(node["left"]))
            attrs["nodes_falsenodeids"].append(0 if leaf else int(node["right"]))
            attrs["nodes_missing_value_tracks_true"].append(int(node["missing_go_to_left"]))
            if leaf:
                attrs["target_treeids"].append(tree)
                attrs["target_nodeids"].append(i)
                attrs["target_ids"].append(0)
                attrs["target_weights"].append(float(node["value"]))
    node = helper.make_node("TreeEnsembleRegressor", ["features"], ["members"], domain="ai.onnx.ml", n_targets=1,
                            aggregate_function="SUM", post_transform="NONE",
                            base_values=[float(np.ravel(model._baseline_prediction)[0])], **attrs)
    graph = helper.make_graph([node], "gradient_boosting_teacher",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
                              [helper.make_tensor_value_info("members", TensorProto.FLOAT, ["batch", 1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.onnx.ml", 3)],
                             producer_name="fabguard")
