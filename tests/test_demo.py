"""`make demo`'s chain end to end, on a reused table and one search epoch."""
import dataclasses
import json

import pytest

from costmodels.predict import predict_genotype
from device_tables import load_table, save_table
from profilers.environment import device_info


@pytest.mark.slow
def test_demo_chain_reuses_the_table_and_reports_budget_predicted_measured(tmp_path, capsys):
    from hwcost.demo import run_demo
    out = tmp_path / "demo"
    out.mkdir()
    # the bundled ort-cpu table holds every key of the CIFAR-10 eval network (and more)
    # as if profiled here (the demo measures a table of another CPU anew)
    t = load_table("device_tables/data/darts_ort-cpu.json")
    save_table(dataclasses.replace(t, device=device_info()), out / "darts-cifar10_ort-cpu.json")
    assert run_demo(str(out), epochs=1, seed=0, calibration_networks=3, network_time_s=0.5) == 0
    text = capsys.readouterr().out
    assert "reusing" in text
    s = json.loads((out / "summary.json").read_text())
    assert s["measured"]["latency_ms"] > 0 and s["measured"]["n"] > 0
    assert (out / "derived.onnx").exists() and (out / "search" / "result.json").exists()
    # the budget is the 30th percentile of random derived networks: the scale of a typical
    # network priced independently (DARTS_V2, by hooks on the built network)
    table = load_table(out / "darts-cifar10_ort-cpu.json")
    typical = predict_genotype("DARTS_V2", table).latency_ms
    assert 0.5 * typical < s["budget_ms"] < 1.5 * typical
    # the predicted latency printed is the search result's derived latency
    r = json.loads((out / "search" / "result.json").read_text())
    assert s["predicted_ms"] == pytest.approx(r["derived"]["latency_ms"])
    # under the budget the search aimed at (B / u, or B (1 - d) after a verify round: below; u < 1 when the
    # calibration says predictions run high, so the aim may exceed B itself)
    assert r["derived"]["latency_ms"] <= r["budgets"]["latency_ms"] * 1.0001
    # the table was calibrated, the search aimed under the budget by its margin, and verified
    assert load_table(out / "darts-cifar10_ort-cpu.json").calibration is not None
    local = r["verify"]["correction"]
    if local is None:           # round 0's network: aimed at B / u
        assert r["budgets"]["latency_ms"] == pytest.approx(s["budget_ms"] / r["confidence"]["upper_factor"])
    else:                       # re-derived around a measured network: aimed at B (1 - d)
        assert r["budgets"]["latency_ms"] == pytest.approx(s["budget_ms"] * (1 - local["local_margin"]))
        assert r["verify"]["rounds"][-2]["correction"]["scale"] == local["local_scale"]
    assert r["confidence"]["confidence"] == 0.9
    assert s["verify"]["rounds"] and s["measured"]["latency_ms"] == s["verify"]["rounds"][-1]["measured_ms"]
    assert "round  budget" in text
    # a round re-derived with the locally scaled model shows the table's figure its interval belongs to
    for v in s["verify"]["rounds"]:
        if abs(v["table_predicted_ms"] / v["predicted_ms"] - 1) > 0.005:
            assert f"(the table: {v['table_predicted_ms']:.2f} ms [{v['low_ms']:.2f}, {v['high_ms']:.2f}])" in text
