"""`evalkit check` per group: every (metric, group) of the baseline is a row with its own
paired test, Holm-adjusted over the check; one regressed group fails the check.

The runs are written by hand (run.json + samples.jsonl), their metric values computed
here from the per-sample scores, so nothing depends on the runner."""
import json
import math

import pytest

from evalkit.results.check import check, holm

SNRS = ["+inf", "10", "5", "0", "-5", "-10"]


def write_run(path, records, metric="accuracy", ci_halfwidth=10.0):
    """A run dir whose run.json metrics are recomputed from `records` (overall and by SNR)."""
    path.mkdir(parents=True)

    def stat(rs):
        if metric == "wer":
            e = sum(r["scores"]["wer_errors"] for r in rs)
            w = sum(r["scores"]["wer_words"] for r in rs)
            v = round(100 * e / w, 4)
            return {"value": v, "ci": [v - ci_halfwidth, v + ci_halfwidth], "n": len(rs),
                    "total_errors": int(e), "total_words": int(w), "higher_is_better": False}
        v = round(100 * sum(r["scores"][metric] for r in rs) / len(rs), 4)
        return {"value": v, "ci": [v - ci_halfwidth, v + ci_halfwidth], "n": len(rs), "higher_is_better": True}

    groups = {"snr": {s: {metric: stat([r for r in records if r["metadata"]["snr"] == s])}
                      for s in SNRS if any(r["metadata"]["snr"] == s for r in records)}}
    run = {"run_id": path.name, "task": {"name": "toy", "main_metric": metric}, "model": {"name": "m", "args": {}},
           "metrics": {metric: stat(records)}, "groups": groups}
    (path / "run.json").write_text(json.dumps(run))
    (path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def acc_records(wrong=frozenset()):
    """40 samples per SNR, all correct except the (snr, index) pairs in `wrong`."""
    return [{"key": f"{s}-{i}", "sample_id": f"{s}-{i}", "metadata": {"snr": s}, "cluster": f"clip{i}",
             "scores": {"accuracy": 0.0 if (s, i) in wrong else 1.0}} for s in SNRS for i in range(40)]


def by_group(rows):
    return {(r["metric"], r["group"]): r for r in rows}


def test_identical_rerun_passes_every_row(tmp_path):
    base = write_run(tmp_path / "base", acc_records({("0", 1), ("-5", 2)}))
    same = write_run(tmp_path / "same", acc_records({("0", 1), ("-5", 2)}))
    failed, rows = check(same, base)
    assert not failed
    assert [r["group"] for r in rows] == [None] + [f"snr={s}" for s in SNRS]
    assert all(r["verdict"] == "ok" and r["p_value"] == 1.0 and r["drop"] == 0 for r in rows)


def test_one_regressed_group_fails_while_overall_passes(tmp_path):
    """-5 dB: 8 newly wrong, 0 newly right (McNemar p = 1/256, x7 by Holm = 0.027);
    elsewhere 6 newly right, so overall 8 worse vs 6 better: p = P(Bin(14, 1/2) >= 8) = 0.395."""
    base_wrong = {(s, i) for s in ("+inf", "10", "5") for i in (0, 1)}
    new_wrong = {("-5", i) for i in range(8)}
    base = write_run(tmp_path / "base", acc_records(base_wrong))
    new = write_run(tmp_path / "new", acc_records(new_wrong))
    failed, rows = check(new, base)
    rows = by_group(rows)
    assert failed
    overall, minus5 = rows[("accuracy", None)], rows[("accuracy", "snr=-5")]
    tail = lambda k, n: sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n  # noqa: E731
    assert overall["verdict"] == "ok" and overall["p_raw"] == pytest.approx(tail(8, 14), abs=1e-6)
    assert minus5["verdict"] == "FAIL" and minus5["drop"] == 20.0
    assert minus5["p_raw"] == pytest.approx(1 / 256, abs=1e-6) and minus5["p_value"] == pytest.approx(7 / 256, abs=1e-6)
    assert minus5["method"] == "paired test on 40 shared samples, Holm over 7 tests"
    assert [k for k, r in rows.items() if r["verdict"] == "FAIL"] == [("accuracy", "snr=-5")]


def test_holm_keeps_a_single_marginal_group_from_failing(tmp_path):
    """5 newly wrong at -5 dB: raw p = 1/32 = 0.031 < 0.05, but 7 tests: adjusted 0.22, ok."""
    base = write_run(tmp_path / "base", acc_records())
    new = write_run(tmp_path / "new", acc_records({("-5", i) for i in range(5)}))
    failed, rows = check(new, base)
    row = by_group(rows)[("accuracy", "snr=-5")]
    assert row["p_raw"] == pytest.approx(1 / 32, abs=1e-6) and row["p_raw"] < 0.05
    assert row["verdict"] == "ok" and not failed
    # the two tied smallest p (overall and -5 dB) are both 1/32: x7 and x6, made monotone: 7/32
    assert by_group(rows)[("accuracy", None)]["p_value"] == pytest.approx(7 / 32, abs=1e-6)


def test_holm_adjustment_by_hand():
    # sorted 0.01, 0.03, 0.04: x3 = 0.03, x2 = 0.06, x1 = 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def wer_records(extra_errors_at=None, extra=1):
    """12 utterances per SNR, 94 reference words per SNR; errors as the committed demo baseline
    has them at -5 dB (76 errors: 80.85%)."""
    words = [8, 7, 9, 6, 8, 10, 7, 8, 9, 7, 8, 7]
    errors = {s: [round(w * f) for w in words] for s, f in zip(SNRS, (0.2, 0.28, 0.36, 0.57, 0.81, 0.91))}
    out = []
    for s in SNRS:
        for i, w in enumerate(words):
            e = errors[s][i] + (extra if s == extra_errors_at else 0)
            out.append({"key": f"{s}-{i}", "sample_id": f"{s}-{i}", "metadata": {"snr": s}, "cluster": f"utt{i}",
                        "scores": {"wer_errors": float(e), "wer_words": float(w)}})
    return out


def test_wer_jump_at_one_snr_fails_by_paired_test(tmp_path):
    """The issue's case: WER at -5 dB up 12.8 points (+1 error on each of 12 utterances), every
    other SNR identical. The baseline's wide -5 dB interval (+-20) would let it pass; the paired
    swap test cannot: every sample is worse, p = 1/4096 exactly (Monte Carlo: ~1/4096)."""
    base = write_run(tmp_path / "base", wer_records(), metric="wer", ci_halfwidth=20.0)
    new = write_run(tmp_path / "new", wer_records("-5"), metric="wer", ci_halfwidth=20.0)
    failed, rows = check(new, base)
    rows = by_group(rows)
    row = rows[("wer", "snr=-5")]
    assert failed and row["verdict"] == "FAIL" and row["drop"] == pytest.approx(1200 / 94, abs=1e-3)
    assert row["method"].startswith("paired test on 12 shared samples")
    assert row["p_raw"] < 0.002  # 1/4096 plus Monte Carlo error of 10000 resamples
    assert all(r["verdict"] == "ok" for k, r in rows.items() if k[1] not in ("snr=-5", None))
    # with a tolerance of 15 points the same jump passes; of 10 it fails in that row only
    assert not check(new, base, tolerance=15.0)[0]
    failed, rows = check(new, base, tolerance=10.0)
    assert failed and [r["group"] for r in rows if r["verdict"] == "FAIL"] == ["snr=-5"]


def test_wer_parts_that_do_not_reproduce_the_value_fall_back_to_the_interval(tmp_path):
    """If the per-sample parts do not add up to the recorded WER (a stale run.json, another
    definition), the paired test would test the wrong number: the row uses the CI instead."""
    base = write_run(tmp_path / "base", wer_records(), metric="wer", ci_halfwidth=20.0)
    new = write_run(tmp_path / "new", wer_records("-5"), metric="wer", ci_halfwidth=20.0)
    run = json.loads((new / "run.json").read_text())
    run["groups"]["snr"]["-5"]["wer"]["value"] += 0.5
    (new / "run.json").write_text(json.dumps(run))
    row = by_group(check(new, base)[1])[("wer", "snr=-5")]
    assert row["method"] == "baseline 95% CI" and row["verdict"] == "ok"  # 93.7 < 80.85 + 20


def test_group_without_samples_or_interval_is_listed_untested(tmp_path):
    base = write_run(tmp_path / "base", acc_records())
    new = write_run(tmp_path / "new", acc_records({("-5", i) for i in range(20)}))
    (base / "samples.jsonl").unlink()
    run = json.loads((base / "run.json").read_text())
    run["groups"]["snr"]["-5"]["accuracy"]["ci"] = [None, None]
    (base / "run.json").write_text(json.dumps(run))
    failed, rows = check(new, base)
    rows = by_group(rows)
    assert rows[("accuracy", "snr=-5")]["verdict"] == "untested"
    assert rows[("accuracy", None)]["method"] == "baseline 95% CI"
    assert rows[("accuracy", None)]["verdict"] == "ok" and not failed  # 91.7 within [90, 110]
