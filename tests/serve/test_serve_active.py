"""Active inspection over HTTP: /route and /route/final give what fabguard.active.Router gives."""

from __future__ import annotations

import json

import math

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="session")
def active_model(tmp_path_factory):
    """A small fitted active-inspection system saved as a model folder, and 50 products to route."""
    import torch

    from fabguard.active.data import mask_unsampled
    from fabguard.active.estimator import ActiveInspector
    from fabguard.active.export import save
    from fabguard.active.simulate import simulate_inspections

    torch.set_num_threads(1)
    frame, roles = simulate_inspections(n_products=650, fault_rate=0.1, seed=5)
    dev = mask_unsampled(frame.iloc[:600], roles, 0.5, np.random.default_rng(0))
    folder = tmp_path_factory.mktemp("active")
    save(ActiveInspector(roles, n_members=1, hidden=(16,), n_folds=2, random_state=0).fit(dev), folder)
    return folder, frame.iloc[600:], roles


@pytest.fixture
def active_client(settings, active_model):
    from fastapi.testclient import TestClient

    from fabguard.serve.app import create_app

    with TestClient(create_app(settings.model_copy(update={"router_dir": active_model[0]}))) as client:
        yield client


def records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in frame.to_dict("records")]


def test_route_and_final_match_the_library(active_client, active_model):
    from fabguard.active.router import Router

    folder, products, roles = active_model
    basic = products[list(roles.basic)]
    expected = Router.load(folder).route(basic, budget=0.3)
    answer = active_client.post("/api/v1/route", json={"records": records(basic), "budget": 0.3})
    assert answer.status_code == 200, answer.text
    got = answer.json()["products"]
    assert [p["decision"] for p in got] == expected["decision"].tolist()
    # the same Router on the same float64 values (JSON round-trips a float64 exactly): bit for bit
    np.testing.assert_array_equal([p["fault_score"] for p in got], expected["fault_score"])
    full = products[list(roles.features)]
    final = active_client.post("/api/v1/route/final", json={"records": records(full)}).json()["final_score"]
    np.testing.assert_array_equal(final, Router.load(folder).final_score(full))


def test_route_refusals(active_client, client, active_model):
    """The ``client`` app has no active model: 404; bad bodies: 422 naming the problem."""
    _, products, roles = active_model
    basic = records(products[list(roles.basic)])
    assert client.post("/api/v1/route", json={"records": basic}).status_code == 404  # no model configured
    for body in ({"records": []}, {"records": basic, "budget": 7}, {"records": [{"nope": 1}]},
                 {"records": basic, "rule": "nope"}, {"records": basic, "mode": "x"}, {"records": "x"}):
        response = active_client.post("/api/v1/route", json=body)
        assert response.status_code == 422 and response.json()["detail"], (body, response.text)
    # JSON that Python parses but cannot turn into numbers or Unicode, in the body or echoed back: 422, strict JSON
    huge = [{**row, next(iter(row)): 10**400} for row in basic[:1]]
    for text in ('{"records": NaN}', '{"records": "\\ud800"}', '{"records": [{"\\ud800": 1}]}',
                 '{"records": ' + json.dumps(huge) + "}"):
        for path in ("/api/v1/route", "/api/v1/route/final"):
            response = active_client.post(path, content=text, headers={"content-type": "application/json"})
            assert response.status_code == 422, (path, text[:60], response.text)
            json.loads(response.text, parse_constant=lambda c: pytest.fail(f"{c} in the answer"))
