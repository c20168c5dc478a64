"""Position-bias and extraction diagnostics against hand-computed cases and scipy."""
import math

import pytest
from scipy.stats import chi2, chisquare

from evalkit.results.diagnostics import (
    chi_square_vs_gold,
    extraction_diagnostics,
    position_bias,
    run_diagnostics,
)

LET = "ABCDEFGH"


def rec(i, k, gold, pred, stage="letter", error=None, cluster=None, output=None):
    """A scored MCQ record: `pred` is the extracted position (None: extraction failed)."""
    return {"key": f"s{i}", "sample_id": f"s{i}", "choices": [f"c{j}" for j in range(k)], "gold": gold,
            "extracted": None if pred is None else LET[pred],
            "extraction_stage": stage if pred is not None else (stage if stage != "letter" else "none"),
            "error": error, "output": output if output is not None else (LET[pred] if pred is not None else "hmm"),
            "cluster": cluster or f"c{i}",
            "scores": {"accuracy": float(pred == gold)}}


def test_always_a_hand_computed():
    # 12 four-choice records, gold 3 at each position, the model always says A:
    # observed [12,0,0,0], expected [3,3,3,3]: (9^2)/3 + 3 * 3^2/3 = 27 + 9 = 36, df 3
    rs = [rec(i, 4, i % 4, 0) for i in range(12)]
    pb = position_bias(rs)
    k4 = pb["by_choice_count"]["4"]
    assert k4["gold"] == {"A": 3, "B": 3, "C": 3, "D": 3}
    assert k4["predicted"] == {"A": 12, "B": 0, "C": 0, "D": 0}
    assert k4["gold_balanced"] is True and k4["unextracted"] == 0
    t = k4["chi_square"]
    assert t["statistic"] == pytest.approx(36.0) and t["df"] == 3
    assert t["p_value"] == pytest.approx(chi2.sf(36.0, 3))
    assert t["min_expected"] == 3.0 and "rough" in t["note"]
    # accuracy by gold position: right only where the gold is A
    acc = k4["accuracy_by_gold_position"]
    assert [acc[x]["value"] for x in "ABCD"] == [100.0, 0.0, 0.0, 0.0]
    assert [acc[x]["n"] for x in "ABCD"] == [3, 3, 3, 3]
    assert pb["combined"]["statistic"] == pytest.approx(36.0) and pb["combined"]["df"] == 3


def test_perfect_model_has_no_preference():
    rs = [rec(i, 3, i % 3, i % 3) for i in range(30)]
    t = position_bias(rs)["by_choice_count"]["3"]["chi_square"]
    assert t["statistic"] == 0.0 and t["p_value"] == pytest.approx(1.0) and "note" not in t


def test_matches_scipy_on_uneven_counts():
    # gold 5/7/8 over positions A/B/C, predictions 10/4/6: expected = the gold histogram
    golds = [0] * 5 + [1] * 7 + [2] * 8
    preds = [0] * 10 + [1] * 4 + [2] * 6
    rs = [rec(i, 3, g, p) for i, (g, p) in enumerate(zip(golds, preds))]
    t = position_bias(rs)["by_choice_count"]["3"]["chi_square"]
    ref = chisquare([10, 4, 6], [5, 7, 8])
    hand = (10 - 5) ** 2 / 5 + (4 - 7) ** 2 / 7 + (6 - 8) ** 2 / 8
    assert t["statistic"] == pytest.approx(hand) == pytest.approx(ref.statistic)
    assert t["p_value"] == pytest.approx(ref.pvalue)
    assert position_bias(rs)["by_choice_count"]["3"]["gold_balanced"] is False


def test_unanswered_records_leave_both_histograms_of_the_test():
    # 8 records, gold A,B,A,B,...; the model answers A where the gold is A and fails elsewhere:
    # over the answered records the gold is all A and so are the predictions: no preference
    # (using the gold of all 8 records would call this a bias towards A)
    rs = [rec(i, 2, i % 2, 0 if i % 2 == 0 else None) for i in range(8)]
    k2 = position_bias(rs)["by_choice_count"]["2"]
    assert k2["predicted"] == {"A": 4, "B": 0} and k2["unextracted"] == 4
    assert k2["gold"] == {"A": 4, "B": 4}
    assert k2["chi_square"]["statistic"] is None and "never sits at B" in k2["chi_square"]["reason"]
    # a mixed case: answered golds A,A,B,B; predicted A,A,A,B -> stat (3-2)^2/2 + (1-2)^2/2 = 1
    rs = [rec(0, 2, 0, 0), rec(1, 2, 0, 0), rec(2, 2, 1, 0), rec(3, 2, 1, 1), rec(4, 2, 1, None)]
    t = position_bias(rs)["by_choice_count"]["2"]["chi_square"]
    assert t["n"] == 4 and t["statistic"] == pytest.approx(1.0)
    assert t["p_value"] == pytest.approx(chi2.sf(1.0, 1))


def test_combined_sums_independent_statistics():
    always_a4 = [rec(i, 4, i % 4, 0) for i in range(12)]  # 36 on 3 df (above)
    golds = [0] * 5 + [1] * 7 + [2] * 8
    preds = [0] * 10 + [1] * 4 + [2] * 6
    k3 = [rec(100 + i, 3, g, p) for i, (g, p) in enumerate(zip(golds, preds))]
    pb = position_bias(always_a4 + k3)
    s3 = chisquare([10, 4, 6], [5, 7, 8]).statistic
    c = pb["combined"]
    assert c["statistic"] == pytest.approx(36.0 + s3) and c["df"] == 5 and c["choice_counts_tested"] == 2
    assert c["p_value"] == pytest.approx(chi2.sf(36.0 + s3, 5))
    assert list(pb["by_choice_count"]) == ["3", "4"]


def test_undefined_cases_and_bad_records():
    t = chi_square_vs_gold([1, 0], [1, 0])
    assert t["statistic"] is None and "nothing to test" in t["reason"]
    with pytest.raises(ValueError, match="same records"):
        chi_square_vs_gold([2, 0], [1, 0])
    assert position_bias([{"key": "x", "choices": None, "gold": None}]) is None
    bad = rec(0, 2, 0, 0)
    bad["extracted"] = "C"
    with pytest.raises(ValueError, match="'s0'.*only 2 choices"):
        position_bias([bad])
    no_cluster = rec(0, 2, 0, 0)
    del no_cluster["cluster"]
    with pytest.raises(ValueError, match="'s0' has no cluster"):
        position_bias([no_cluster])


def test_accuracy_ci_resamples_clusters():
    # positions A: 2 of 3 right; the CI comes from the clustered bootstrap (not a point)
    rs = [rec(0, 2, 0, 0), rec(1, 2, 0, 0), rec(2, 2, 0, 1), rec(3, 2, 1, 1), rec(4, 2, 1, 1)]
    acc = position_bias(rs)["by_choice_count"]["2"]["accuracy_by_gold_position"]
    assert acc["A"]["value"] == pytest.approx(200 / 3, abs=1e-3) and acc["A"]["n"] == 3
    lo, hi = acc["A"]["ci"]
    assert lo <= acc["A"]["value"] <= hi and lo < hi
    assert acc["B"]["value"] == 100.0


def test_extraction_rates_and_round_robin_examples():
    rs = ([rec(i, 4, 0, 0) for i in range(10)]
          + [rec(10 + i, 4, 0, None, stage="none", output="x" * 1000) for i in range(6)]
          + [rec(20 + i, 4, 0, None, stage="ambiguous", output="A or B") for i in range(3)]
          + [rec(30, 4, 0, None, stage="empty", output="")]
          + [{**rec(40, 4, 0, None, stage="error"), "error": "timeout", "output": None}])
    ex = extraction_diagnostics(rs, examples=5, chars=50)
    assert ex["records"] == 20 and ex["model_errors"] == 1
    assert ex["failures"] == 10 and ex["failure_rate"] == pytest.approx(0.5)
    assert ex["by_stage"]["none"] == {"count": 6, "rate": pytest.approx(0.3), "failure": True}
    assert ex["by_stage"]["letter"]["failure"] is False and ex["by_stage"]["letter"]["rate"] == 0.5
    assert "error" not in ex["by_stage"]
    # round robin over stages, most frequent first: none, ambiguous, empty, none, ambiguous
    assert [e["stage"] for e in ex["examples"]] == ["none", "ambiguous", "empty", "none", "ambiguous"]
    assert [e["key"] for e in ex["examples"]] == ["s10", "s20", "s30", "s11", "s21"]
    assert ex["examples"][0]["output"] == "x" * 50 + "…" and ex["examples"][1]["output"] == "A or B"
    assert extraction_diagnostics([])["failure_rate"] is None


def test_run_diagnostics_on_real_runs(toy):
    """A scripted model that always avoids the gold (picks the first other option) is flagged; the
    one that answers right is not."""
    from evalkit.engine.runner import RunSpec, reached_model, run_task
    from evalkit.engine.store import read_records
    from evalkit.registry import get_task

    task = get_task("toy-mcq").from_args({"data": str(toy / "toy.json")})
    out = {}
    for wrong in (False, True):
        res = run_task(RunSpec(model="scripted", task="toy-mcq", task_args={"data": str(toy / "toy.json")},
                               model_args={"answers": str(toy / "key.json"), "wrong": wrong},
                               output=toy / f"runs{wrong}"))
        recs = [r for r in read_records(res.run_dir / "samples.jsonl") if reached_model(r)]
        out[wrong] = run_diagnostics(task, recs)
    good, bad = out[False]["position_bias"], out[True]["position_bias"]
    assert good["gold_balanced"] and good["combined"]["statistic"] == 0.0
    # wrong: 6 records per k, gold balanced; the model says A unless the gold is A (then B)
    for k, d in bad["by_choice_count"].items():
        k = int(k)
        g = d["gold"]
        assert sum(g.values()) == 6 and max(g.values()) - min(g.values()) <= 1
        assert d["predicted"]["A"] == 6 - g["A"] and d["predicted"]["B"] == g["A"]
        exp = [g[x] for x in LET[:k]]
        obs = [d["predicted"][x] for x in LET[:k]]
        assert d["chi_square"]["statistic"] == pytest.approx(chisquare(obs, exp).statistic)
        assert all(v["value"] == 0.0 for v in d["accuracy_by_gold_position"].values())
    # 6 records per k is little evidence (k=2 is even symmetric: A<->B), but the sum is what it must be
    stats = [d["chi_square"]["statistic"] for d in bad["by_choice_count"].values()]
    assert bad["combined"]["statistic"] == pytest.approx(sum(stats)) and sum(stats) > 0
    assert bad["combined"]["p_value"] == pytest.approx(chi2.sf(sum(stats), 1 + 2 + 3 + 4))
    assert out[False]["extraction"]["failure_rate"] == 0.0 and out[True]["extraction"]["records"] == 24
    assert not math.isnan(bad["combined"]["statistic"])
