"""Protocol properties that make numbers comparable, each tested so that the mutation
which breaks it fails here: balanced positions depend on the seed; circular scoring
takes the worst rotation; resume keeps the latest record of a retried key; the run id
follows the data (and audio) hash; symlinks cannot escape the audio root; the mixer's
SNR is the SNR an independent measurement finds."""
import json
import math
import os
import re
from collections import Counter

import numpy as np
import plugins
import pytest

from evalkit import registry
from evalkit.audio import UnsafePathError, resolve_under
from evalkit.engine.runner import RunSpec, run_task
from evalkit.engine.store import latest_by_key, read_records
from evalkit.protocol.choices import LETTERS, gold_histogram, present
from evalkit.protocol.circular import collapse_rotations
from evalkit.types import Response, Sample

# ------------------------------------------------------------ adapters for these tests


class OneRotationWrongConfig(plugins.ScriptedConfig):
    wrong_keys: list[str] = []  # model-call keys ("s3#rot1") answered with a non-gold option


class OneRotationWrong(plugins.Scripted):
    """The scripted adapter, but wrong on the listed rotations."""

    name = "rotation-wrong"
    Config = OneRotationWrongConfig

    def generate(self, requests):
        out = []
        for r in requests:
            if r.key not in self.config.wrong_keys:
                out += super().generate([r])
                continue
            options = dict(re.findall(r"^\(([A-Z])\) (.*)$", r.text(), re.M))
            gold = self.key[r.key.split("#rot")[0]]
            out.append(Response(r.key, text=f"The answer is ({next(k for k, v in options.items() if v != gold)}).",
                                latency_s=0.0))
        return out


class FlakyConfig(plugins.ScriptedConfig):
    error_on: list[str] = []  # keys answered with an error response (a transient failure)


class Flaky(plugins.Scripted):
    name = "flaky"
    Config = FlakyConfig
    volatile_args = plugins.Scripted.volatile_args | {"error_on"}  # a retry is the same run

    def generate(self, requests):
        return [Response(r.key, error="HTTP 503 (simulated)") if r.key in self.config.error_on
                else super(Flaky, self).generate([r])[0] for r in requests]


@pytest.fixture
def toy_more(toy, monkeypatch):
    monkeypatch.setenv("EVALKIT_MODELS", "scripted=plugins:Scripted,"
                       "rotation-wrong=test_protocol_properties:OneRotationWrong,"
                       "flaky=test_protocol_properties:Flaky")
    registry._table.cache_clear()
    return toy


def spec(toy, model="scripted", **kw):
    args = {"answers": str(toy / "key.json"), **kw.pop("model_args", {})}
    kw.setdefault("output", toy / "runs")
    return RunSpec(model=model, task="toy-mcq", model_args=args, task_args={"data": str(toy / "toy.json")}, **kw)


# ------------------------------------------------------------ balanced positions


def mcq_samples(n=120):
    return [Sample(id=f"q{i}", question="?", choices=[f"c{j}" for j in range(k)], answer=i % k)
            for i, k in ((i, [2, 3, 4, 5][i % 4]) for i in range(n))]


def test_balanced_positions_depend_on_the_seed_and_are_balanced_for_each():
    samples = mcq_samples()
    perms = {}
    for seed in (0, 1):
        shown = present(samples, "balanced", seed)
        perms[seed] = {p.key: p.permutation for p in shown}
        for p in shown:  # a permutation of the choices, the gold where it says
            assert sorted(p.permutation) == list(range(len(p.sample.choices)))
            assert p.choices[p.gold] == p.sample.choices[p.sample.answer]
        after = gold_histogram(shown)["after"]
        assert set(after) == {"2", "3", "4", "5"}
        for k, counts in after.items():
            # every position holds the gold equally often, within one (30 samples per k)
            full = [counts.get(LETTERS[i], 0) for i in range(int(k))]
            assert max(full) - min(full) <= 1, (seed, k, counts)
        # the gold's position is counted independently of gold_histogram too
        mine = Counter((len(p.sample.choices), p.permutation.index(p.sample.answer)) for p in shown)
        for k in (2, 3, 4, 5):
            assert max(mine[k, i] for i in range(k)) - min(mine[k, i] for i in range(k)) <= 1
    differ = sum(perms[0][k] != perms[1][k] for k in perms[0])
    # two seeds agree on a sample's permutation by chance with prob ~1/k!; 120 samples
    # (k = 2..5) would agree on ~24 if independent: far fewer than 120 - 60
    assert differ >= 60, differ
    # and the upstream order is not what balancing returns
    assert sum(p != list(range(len(p))) for p in perms[0].values()) >= 60


# ------------------------------------------------------------ circular


def test_collapse_rotations_takes_the_worst_rotation():
    recs = [{"key": f"a#rot{r}", "sample_id": "a", "scores": {"accuracy": s, "extraction_failure": f}}
            for r, (s, f) in enumerate([(1.0, 0.0), (0.0, 1.0), (1.0, 0.0)])]
    recs += [{"key": f"b#rot{r}", "sample_id": "b", "scores": {"accuracy": 1.0, "extraction_failure": 0.0}}
             for r in range(3)]
    recs += [{"key": f"c#rot{r}", "sample_id": "c", "scores": {"accuracy": s}} for r, s in enumerate([None, 1.0])]
    out = {r["sample_id"]: r["scores"] for r in collapse_rotations(recs)}
    assert out["a"] == {"accuracy": 0.0, "extraction_failure": 1.0}  # any rotation failing fails the sample
    assert out["b"] == {"accuracy": 1.0, "extraction_failure": 0.0}
    assert out["c"] == {"accuracy": 1.0}  # a not-counted rotation is skipped


def test_circular_run_with_one_wrong_rotation_scores_the_sample_wrong(toy_more):
    """6 samples answered wrongly in exactly one rotation (the rest right): 18 of 24 correct."""
    data = json.loads((toy_more / "toy.json").read_text())
    wrong = {f"s{i}#rot{i % len(data[i]['choices'])}" for i in (1, 4, 7, 10, 13, 22)}
    res = run_task(spec(toy_more, "rotation-wrong", choices="circular", model_args={"wrong_keys": sorted(wrong)}))
    acc = res.run["metrics"]["accuracy"]
    assert acc["n"] == 24 and acc["value"] == pytest.approx(100 * 18 / 24, abs=1e-3)
    recs = read_records(res.run_dir / "samples.jsonl")
    assert {r["key"] for r in recs if r["scores"]["accuracy"] == 0.0} == wrong  # the rotations themselves


# ------------------------------------------------------------ resume keeps the latest record


def test_latest_by_key_keeps_the_last_record_of_each_key():
    recs = [{"key": "a", "v": 1}, {"key": "b", "v": 2}, {"key": "a", "v": 3}, {"key": "c", "v": 4}, {"key": "a", "v": 5}]
    assert latest_by_key(recs) == {"a": {"key": "a", "v": 5}, "b": {"key": "b", "v": 2}, "c": {"key": "c", "v": 4}}


def test_resume_scores_the_retried_record_not_the_error(toy_more):
    first = run_task(spec(toy_more, "flaky", model_args={"error_on": ["s5", "s17"]}))
    assert first.run["counts"]["errors"] == 2
    assert first.run["metrics"]["accuracy"]["value"] == pytest.approx(100 * 22 / 24, abs=1e-3)
    second = run_task(spec(toy_more, "flaky", retry_errors=True))
    assert second.run_id == first.run_id and second.calls == 2  # only the errors are asked again
    assert second.run["counts"]["errors"] == 0
    assert second.run["metrics"]["accuracy"]["value"] == 100.0
    recs = read_records(second.run_dir / "samples.jsonl")
    assert [r["error"] for r in recs if r["key"] in ("s5", "s17")] == [None, None]  # the log kept the retry
    third = run_task(spec(toy_more, "flaky"))  # a plain resume reads the log back: nothing to do
    assert third.calls == 0 and third.run["metrics"]["accuracy"]["value"] == 100.0


# ------------------------------------------------------------ the run id follows the data


def test_run_id_changes_with_the_data_hash_alone(toy_more):
    a = run_task(spec(toy_more))
    path = toy_more / "toy.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=2))  # same samples, other bytes
    b = run_task(spec(toy_more))
    prompts = lambda res: {r["key"]: r["prompt"] for r in read_records(res.run_dir / "samples.jsonl")}  # noqa: E731
    assert prompts(a) == prompts(b)  # nothing the model sees changed ...
    assert b.run["task"]["data_hash"] != a.run["task"]["data_hash"]
    assert b.run_id != a.run_id  # ... but the data did, and the run id says so


def test_run_id_changes_with_the_audio_bytes(toy_more):
    import soundfile as sf

    a = run_task(spec(toy_more))
    sf.write(toy_more / "audio" / "a3.wav", np.full(1600, 0.05, dtype="float32"), 16000)
    b = run_task(spec(toy_more))
    assert b.run_id != a.run_id and b.calls == 24


# ------------------------------------------------------------ audio root


def test_symlink_inside_the_root_pointing_outside_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.wav").write_bytes(b"RIFF")
    (root / "inner.wav").write_bytes(b"RIFF")
    os.symlink(outside / "secret.wav", root / "link.wav")
    os.symlink(outside, root / "linkdir")
    os.symlink(root / "inner.wav", root / "ok.wav")
    for rel in ("link.wav", "linkdir/secret.wav", "linkdir/../root/link.wav", "./link.wav"):
        with pytest.raises(UnsafePathError, match="escapes the data root"):
            resolve_under(root, rel)
    assert resolve_under(root, "ok.wav").resolve() == (root / "inner.wav").resolve()  # staying inside is fine


def test_symlink_reached_through_a_missing_folder_and_dotdot_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.wav").write_bytes(b"RIFF")
    os.symlink(outside / "secret.wav", root / "link.wav")
    with pytest.raises(UnsafePathError, match="escapes the data root"):
        got = resolve_under(root, "missing/../link.wav")
        assert os.path.realpath(got) != str(outside / "secret.wav"), got


# ------------------------------------------------------------ SNR by an independent measurement


def active_region_snr(speech_component, background_component, sample_rate):
    """The module docstring's definition, written out here: 20-ms frames, a frame active when
    its mean square is within 40 dB of the loudest frame's (the trailing partial frame judged
    on its own), both powers averaged over the active frames' samples."""
    flen = round(0.02 * sample_rate)
    bounds = list(range(0, len(speech_component), flen)) + [len(speech_component)]
    frames = [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    energy = [float(np.mean(speech_component[a:b] ** 2)) for a, b in frames]
    active = [e >= max(energy) / 1e4 for e in energy]
    idx = np.concatenate([np.arange(a, b) for (a, b), on in zip(frames, active) if on])
    return 10 * math.log10(np.mean(speech_component[idx] ** 2) / np.mean(background_component[idx] ** 2))


@pytest.mark.parametrize("snr", [10.0, 0.0, -7.5])
def test_mixture_snr_by_independent_measurement(snr):
    from evalkit.tasks.sseu.mixing import mix_at_snr

    sr = 16000
    rng = np.random.default_rng(3)
    n = int(2.013 * sr)  # a trailing partial frame
    speech = np.zeros(n)
    speech[int(0.4 * sr): int(1.3 * sr)] = rng.standard_normal(int(1.3 * sr) - int(0.4 * sr)) * 0.3
    speech[int(1.5 * sr): int(1.8 * sr)] = rng.standard_normal(int(1.8 * sr) - int(1.5 * sr)) * 0.1
    # background far louder in the speech's silences: whole-clip power would be another SNR
    env = np.where((np.arange(n) > 0.4 * sr) & (np.arange(n) < 1.8 * sr), 0.05, 0.6)
    background = rng.standard_normal(n) * env
    mix, _ = mix_at_snr(speech, background, snr, sr)
    # recover the two scaled components from the mixture itself (least squares on the inputs)
    (gs, gb), *_ = np.linalg.lstsq(np.stack([speech, background], 1), mix.astype(np.float64), rcond=None)
    sc, bc = gs * speech, gb * background
    assert active_region_snr(sc, bc, sr) == pytest.approx(snr, abs=0.01)
    whole = 10 * math.log10(np.mean(sc ** 2) / np.mean(bc ** 2))
    assert abs(whole - snr) > 3  # the two definitions differ here: the test tells them apart
    flen = round(0.02 * sr)
    energy = [np.mean(sc[i:i + flen] ** 2) for i in range(0, n, flen)]
    on = np.repeat([e >= max(energy) / 1e4 for e in energy], flen)[:n]
    if np.max(np.abs(mix)) < 0.98:  # no common gain: the speech sits at -25 dBFS active level
        assert 10 * math.log10(np.mean(sc[on] ** 2)) == pytest.approx(-25.0, abs=0.01)


def test_collapse_rotations_keeps_rotation_zero_fields_and_all_none_scores():
    """The collapsed record is rotation 0's with the sample id as key; a score that every rotation
    leaves None stays None (not counted)."""
    recs = [{"sample_id": "s", "key": f"s#rot{r}", "rotation": r, "output": f"out{r}",
             "scores": {"accuracy": 1.0, "official": None}} for r in range(3)]
    (out,) = collapse_rotations(recs)
    assert out["key"] == "s" and out["rotation"] == 0 and out["output"] == "out0"
    assert out["scores"] == {"accuracy": 1.0, "official": None}
