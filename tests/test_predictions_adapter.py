"""The predictions adapter: score outputs produced elsewhere (JSONL or a JSON list)."""
from __future__ import annotations

import hashlib
import json

import pytest

from evalkit.models.predictions import PredictionsError, PredictionsFile
from evalkit.types import AudioRef, Request


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


def test_circular_keys(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "q1", "response": "plain"},
        {"id": "q2#rot1", "response": "rot-specific"},
        {"id": "q2", "response": "q2 plain"},
    ])
    m = make(p)
    out = m.generate([req("q1#rot0"), req("q1#rot2"), req("q2#rot1"), req("q2#rot0"), req("q3#rot1")])
    assert [r.text for r in out[:4]] == ["plain", "plain", "rot-specific", "q2 plain"]
    assert "'q3'" in out[4].error


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
