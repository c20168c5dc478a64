"""The predictions adapter: score outputs produced elsewhere (JSONL or a JSON list, or an evalkit
samples.jsonl), and the choice order its letters are read against."""
from __future__ import annotations

import hashlib
import json

import pytest

from evalkit.models.predictions import PredictionsError, PredictionsFile
from evalkit.protocol.choices import LETTERS, present
from evalkit.types import AudioRef, Request, Sample


def req(key: str) -> Request:
    # audio that does not exist: the adapter must never decode it
    return Request(key, [{"role": "user", "content": [
        {"type": "audio", "audio": AudioRef(path="/nonexistent/clip.wav")},
        {"type": "text", "text": "question"}]}])


def make(path, **kw) -> PredictionsFile:
    return PredictionsFile.from_args({"path": str(path), **kw})


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_auto_field(tmp_path):
    p = write_jsonl(tmp_path / "preds.jsonl", [
        {"id": "q1", "response": "The answer is (A)."},
        {"id": "q2", "response": "B"},
        {"id": 3, "response": "C"},  # ids are compared as strings
    ])
    m = make(p)
    out = m.generate([req("q2"), req("q1"), req("3")])
    assert [(r.key, r.text, r.error) for r in out] == [
        ("q2", "B", None), ("q1", "The answer is (A).", None), ("3", "C", None)]
    info = m.info()
    assert info["path"] == str(p)
    assert info["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert info["response_field"] == ["response"] and info["n_predictions"] == 3


def test_json_list_mmau_style(tmp_path):
    items = [
        {"id": "a1b2", "audio_id": "./test-mini-audios/a1b2.wav", "question": "Which?",
         "choices": ["dog", "cat"], "answer": "cat", "task": "sound", "model_output": "cat"},
        {"id": "c3d4", "audio_id": "./test-mini-audios/c3d4.wav", "question": "Which?",
         "choices": ["x", "y"], "answer": "x", "task": "music", "model_output": "(A) x"},
    ]
    p = tmp_path / "mmau-test-mini.json"
    p.write_text(json.dumps(items, indent=2), encoding="utf-8")
    m = make(p)
    out = m.generate([req("c3d4"), req("a1b2")])
    assert [r.text for r in out] == ["(A) x", "cat"]
    assert m.info()["response_field"] == ["model_output"]


@pytest.mark.parametrize("field", ["response", "output", "model_output", "answer_prediction",
                                   "model_prediction", "prediction"])
def test_each_auto_field(tmp_path, field):
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": "x", field: "ok"}])
    assert make(p).generate([req("x")])[0].text == "ok"


def test_auto_detection_priority_and_explicit_field(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": "x", "prediction": "late", "response": "first", "mine": "m"}])
    assert make(p).generate([req("x")])[0].text == "first"
    assert make(p, response_field="mine").generate([req("x")])[0].text == "m"
    with pytest.raises(PredictionsError, match="'absent'"):
        make(p, response_field="absent")


def test_custom_id_field(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"question_id": "z9", "output": "D"}])
    assert make(p, id_field="question_id").generate([req("z9")])[0].text == "D"
    with pytest.raises(PredictionsError, match="line 1.*'id'"):
        make(p)


def test_missing_id_is_error_response(tmp_path):
    p = write_jsonl(tmp_path / "preds.jsonl", [{"id": "q1", "response": "A"}])
    out = make(p).generate([req("q1"), req("nope")])
    assert out[0].text == "A" and out[0].error is None
    assert out[1].text is None
    assert "'nope'" in out[1].error and "preds.jsonl" in out[1].error


def test_duplicate_id_fails_at_load(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": "q1", "response": "A"}, {"id": "q2", "response": "B"},
                                           {"id": "q1", "response": "C"}])
    with pytest.raises(PredictionsError, match=r"line 3: duplicate id 'q1'"):
        make(p)
    j = tmp_path / "p.json"
    j.write_text(json.dumps([{"id": 1, "output": "A"}, {"id": "1", "output": "B"}]))
    with pytest.raises(PredictionsError, match=r"item 1: duplicate id '1'"):
        make(j)


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "q1", "response": "A"}\n\n{"id": "q2", "response": \n', encoding="utf-8")
    with pytest.raises(PredictionsError, match=r"bad\.jsonl line 3: malformed JSON"):
        make(p)


def test_non_object_line_and_missing_prediction(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "q1", "response": "A"}\n["q2", "B"]\n')
    with pytest.raises(PredictionsError, match="line 2: expected a JSON object"):
        make(p)
    p.write_text('{"id": "q1", "text": "A"}\n')
    with pytest.raises(PredictionsError, match="line 1: no prediction field .*response_field"):
        make(p)


def test_malformed_json_list(tmp_path):
    p = tmp_path / "p.json"
    p.write_text('[\n {"id": "q1", "output": "A"},\n {"id": \n]')
    with pytest.raises(PredictionsError, match=r"p\.json: invalid JSON at line 4"):
        make(p)


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(PredictionsError, match="not found"):
        make(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PredictionsError, match="no predictions"):
        make(tmp_path / "empty.jsonl")


def test_null_and_non_string_predictions(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "response": None}, {"id": "b", "response": 2},
                                           {"id": "c", "response": ["x"]}])
    out = make(p).generate([req("a"), req("b"), req("c")])
    assert "null" in out[0].error
    assert out[1].text == "2" and out[2].text == '["x"]'


def test_bom_and_utf8(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_bytes('\ufeff{"id": "q1", "response": "café"}\n'.encode("utf-8"))
    assert make(p).generate([req("q1")])[0].text == "café"


def test_contract_attributes(tmp_path):
    assert PredictionsFile.name == "predictions"
    assert PredictionsFile.needs_audio is False
    assert PredictionsFile.sample_rate is None
    assert {"audio", "text", "multi_audio"} <= PredictionsFile.capabilities
    with pytest.raises(Exception, match="respones_field"):
        PredictionsFile.Config(path="x", respones_field="y")
    from evalkit import registry

    assert registry.get_model("predictions") is PredictionsFile


def test_raw_line_separators_inside_strings_are_text(tmp_path):
    """json.dumps(ensure_ascii=False) writes U+2028/U+2029/U+0085 raw (evalkit's own samples.jsonl does);
    str.splitlines() would cut such a record in two and refuse the file."""
    p = tmp_path / "p.jsonl"
    texts = {"a": "line\u2028sep (A)", "b": "para\u2029sep", "c": "next\x85line", "d": "crlf"}
    p.write_text("".join(json.dumps({"id": k, "response": v}, ensure_ascii=False) + "\r\n" for k, v in texts.items()),
                 encoding="utf-8")
    out = make(p).generate([req(k) for k in texts])
    assert [r.text for r in out] == list(texts.values())


def test_nan_prediction_is_no_prediction(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "a", "response": NaN}\n{"id": "b", "response": "B"}\n')  # what json.dumps(nan) writes
    out = make(p).generate([req("a"), req("b")])
    assert "null" in out[0].error and out[0].text is None
    assert out[1].text == "B"


# ---- the choice order ------------------------------------------------------------------------------
def mcq_samples(n: int = 12, k: int = 4) -> list[Sample]:
    """n k-option questions whose gold is option n % k in upstream order."""
    return [Sample(id=f"s{i}", question=f"q{i}?", choices=[f"opt{i}-{j}" for j in range(k)], answer=i % k)
            for i in range(n)]


def test_plain_file_refuses_permuted_orders(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": f"s{i}", "response": "(A)"} for i in range(12)])
    cfg = PredictionsFile.Config(path=p)
    samples = mcq_samples()
    PredictionsFile.check_protocol(cfg, "original", present(samples, "original", 0))  # the upstream order: fine
    for mode in ("balanced", "circular"):
        with pytest.raises(PredictionsError) as e:
            PredictionsFile.check_protocol(cfg, mode, present(samples, mode, 0))
        msg = str(e.value)
        assert f"--choices {mode}" in msg and "--choices original" in msg and "samples.jsonl" in msg and str(p) in msg
    # a task without options has no order to get wrong
    open_ended = [Sample(id=f"s{i}", question="transcribe", target={"text": "x"}) for i in range(3)]
    PredictionsFile.check_protocol(cfg, "balanced", present(open_ended, "balanced", 0))
    assert PredictionsFile.choice_order == "original"


def samples_jsonl(path, presentations, output=lambda p: f"The answer is ({LETTERS[p.gold]}).", **extra):
    """An evalkit samples.jsonl as the run log writes it (the fields the adapter reads)."""
    rows = [{"key": p.key, "sample_id": p.sample.id, "rotation": p.rotation, "choices": p.choices,
             "permutation": p.permutation, "gold": p.gold, "output": output(p), "error": None, **extra}
            for p in presentations]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("mode", ["balanced", "circular", "original"])
def test_evalkit_samples_file_is_checked_against_the_run_order(tmp_path, mode):
    samples = mcq_samples()
    written = present(samples, mode, 0)
    p = samples_jsonl(tmp_path / "samples.jsonl", written)
    cfg = PredictionsFile.Config(path=p)
    PredictionsFile.check_protocol(cfg, mode, present(samples, mode, 0))  # the same order: accepted
    m = PredictionsFile(cfg)
    assert m.info()["format"] == "evalkit samples.jsonl" and m.info()["n_predictions"] == len(written)
    out = m.generate([Request(x.key, []) for x in written])
    assert [r.text for r in out] == [f"The answer is ({LETTERS[x.gold]})." for x in written]
    # any other order is refused, naming a key and the fix (circular rotations do not depend on the seed)
    others = {"balanced": [("original", 0), ("circular", 0), ("balanced", 1)],
              "circular": [("balanced", 0), ("original", 0)], "original": [("balanced", 0), ("circular", 0)]}
    for other_mode, seed in others[mode]:
        with pytest.raises(PredictionsError, match=r"another choice order.*key 's\d+.*--choices and --seed"):
            PredictionsFile.check_protocol(cfg, other_mode, present(samples, other_mode, seed))


def test_evalkit_samples_permutation_alone_decides(tmp_path):
    """Records without their choices (an edited log) are still checked by permutation."""
    samples = mcq_samples()
    p = samples_jsonl(tmp_path / "samples.jsonl", present(samples, "balanced", 0), choices=None)
    cfg = PredictionsFile.Config(path=p)
    PredictionsFile.check_protocol(cfg, "balanced", present(samples, "balanced", 0))
    with pytest.raises(PredictionsError, match=r"key 's\d+': recorded permutation \[\d, \d, \d, \d\], this run presents"):
        PredictionsFile.check_protocol(cfg, "balanced", present(samples, "balanced", 1))


def test_evalkit_samples_choices_must_match(tmp_path):
    samples = mcq_samples()
    p = samples_jsonl(tmp_path / "samples.jsonl", present(samples, "balanced", 0))
    edited = mcq_samples()
    edited[3].choices[1] = "changed upstream"
    with pytest.raises(PredictionsError, match=r"key 's3'.*task data differs"):
        PredictionsFile.check_protocol(PredictionsFile.Config(path=p), "balanced", present(edited, "balanced", 0))


def test_evalkit_samples_later_record_supersedes_and_errors_carry_over(tmp_path):
    samples = mcq_samples(2)
    pres = present(samples, "balanced", 0)
    rows = [{"key": "s0", "sample_id": "s0", "permutation": pres[0].permutation, "choices": pres[0].choices,
             "output": None, "error": "HTTP 500"},
            {"key": "s1", "sample_id": "s1", "permutation": pres[1].permutation, "choices": pres[1].choices,
             "output": None, "error": "HTTP 401 unauthorized"},
            {"key": "s0", "sample_id": "s0", "permutation": pres[0].permutation, "choices": pres[0].choices,
             "output": "(B)", "error": None}]  # the retried record
    p = write_jsonl(tmp_path / "samples.jsonl", rows)
    out = make(p).generate([Request("s0", []), Request("s1", []), Request("s2", [])])
    assert out[0].text == "(B)" and out[0].error is None
    assert out[1].text is None and "HTTP 401 unauthorized" in out[1].error
    assert "no prediction for key 's2'" in out[2].error


def test_evalkit_samples_malformed(tmp_path):
    p = write_jsonl(tmp_path / "s.jsonl", [{"key": "a", "permutation": [0, 1], "output": "A"},
                                           {"key": "b", "output": "B"}])
    with pytest.raises(PredictionsError, match=r"line 2: no 'permutation' field"):
        make(p)
    write_jsonl(p, [{"key": "a", "permutation": "0,1", "output": "A"}])
    with pytest.raises(PredictionsError, match=r"line 1: key 'a': field 'permutation' must be a list"):
        make(p)
    write_jsonl(p, [{"key": "a", "permutation": [1, 0], "output": "A"}])
    with pytest.raises(PredictionsError, match="drop id_field"):
        make(p, id_field="sample_id")


def test_a_run_scores_predictions_only_in_the_order_they_answered(toy):
    """End to end through the runner: a file of correct upstream letters scores 100% with --choices
    original (letters and option texts alike) and is refused under a permuted order (today it scored
    near chance with exit 0); an evalkit samples.jsonl is scored in the order it records, and refused
    in any other. The letters are derived from the upstream data here, not by evalkit."""
    from evalkit.engine.runner import RunSpec, run_task

    items = json.loads((toy / "toy.json").read_text())
    letters = write_jsonl(toy / "letters.jsonl", [
        {"id": it["id"], "response": f"({LETTERS[it['choices'].index(it['answer'])]})"} for it in items])
    texts = write_jsonl(toy / "texts.jsonl", [{"id": it["id"], "response": it["answer"]} for it in items])

    def run(model, args, choices, seed=0):
        return run_task(RunSpec(model=model, task="toy-mcq", model_args=args, task_args={"data": str(toy / "toy.json")},
                                choices=choices, seed=seed, output=toy / "runs"))

    def accuracy(path, choices, seed=0):
        res = run("predictions", {"path": str(path)}, choices, seed)
        assert res.run["status"] == "complete" and res.run["counts"]["errors"] == 0
        return res.run["metrics"]["accuracy"]["value"]

    assert accuracy(letters, "original") == 100.0
    assert accuracy(texts, "original") == 100.0
    for mode in ("balanced", "circular"):
        with pytest.raises(ValueError, match="--choices original"):
            run("predictions", {"path": str(letters)}, mode)
    # a run's own log: the scripted model answers the letter of the gold in the order it was shown
    scripted = run("scripted", {"answers": str(toy / "key.json")}, "balanced")
    assert scripted.run["metrics"]["accuracy"]["value"] == 100.0
    log = scripted.run_dir / "samples.jsonl"
    assert accuracy(log, "balanced") == 100.0
    for choices, seed in (("original", 0), ("balanced", 1)):
        with pytest.raises(ValueError, match="another choice order"):
            run("predictions", {"path": str(log)}, choices, seed)
