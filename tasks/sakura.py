"""SAKURA (Yang et al., Interspeech 2025): multi-hop reasoning over speech and audio attributes.

Four tracks (attributes): Gender, Language, Emotion, Animal; 500 clips each. Every clip carries
two questions: a single-hop one (name the attribute) and a multi-hop one (reason from the
attribute to a fact about it), so the two hops pair up clip by clip.

Data: `-T data=DIR`, the `data/` folder of github ckyang1124/SAKURA (checked against commit
a1fdb146f638fe4740c20a31ba6da868f2cb2313): `DIR/<Track>/metadata.csv` with columns file,
attribute_label, single_instruction, single_answer, multi_instruction, multi_answer, audio at
`DIR/<Track>/audio/<file>`. `metadata.json` (keyed by "data/<Track>/audio/<file>") is read when
the CSV is absent. The options are written inside the instruction ("... speaker. (a) Female
(b) Male") and the answer as "(a) Female"; the loader splits them into question and choices,
and an answer whose text is not the option of its letter is a loader warning (item skipped).
All 4000 upstream questions split cleanly (2 options for Gender, 4 for the others).
`-T tracks=gender,animal` selects tracks.

The HF copies (SLLM-multi-hop/{Gender,Language,Emotion,Animal}QA) are not read: their row
format could not be checked here, so the loader refuses them rather than guess.

Scoring: evalkit's protocol (balanced choice order, never-guess extraction). Upstream scores
with a GPT-4o judge (`evaluation/llm_judge.py`, then `calculate_acc.py`); that figure is not
reproduced (no judge in evalkit), so there is no `accuracy_official`.

Groupings: attribute, hop, and attribute/hop (`cell`). The reported gap
`gap_multi_minus_single` (percentage points; overall and per attribute) is mean(multi correct)
- mean(single correct) over the clips answered at both hops, with a PAIRED cluster bootstrap:
each resample draws clips (single and multi question together) with replacement and takes the
mean of the per-clip differences, through the same `Bootstrap` as every evalkit metric.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from evalkit.protocol.choices import LETTERS
from evalkit.results.metrics import Bootstrap, MetricSpec
from evalkit.tasks.base import DEFAULT_MCQ_PROMPT, LoadedData, MCQTask, TaskDataError, TaskOptions, hash_files
from evalkit.tasks.loaders import loads_json, local_audio
from evalkit.types import Presentation, Sample

UPSTREAM = "github ckyang1124/SAKURA@a1fdb14 data/"
TRACKS = {"gender": "Gender", "language": "Language", "emotion": "Emotion", "animal": "Animal"}
HOPS = {"single": "single", "multi": "multi"}
COLUMNS = ("file", "attribute_label", "single_instruction", "single_answer", "multi_instruction", "multi_answer")
GAP = "gap_multi_minus_single"

_OPTION = re.compile(r"\(([a-z])\)\s*")
_ANSWER = re.compile(r"\(([a-z])\)\s*(.*)", re.S)


def split_instruction(text: str) -> tuple[str, list[str]] | None:
    """("question", [options]) of an instruction with inline "(a) X (b) Y" options, letters in
    order from (a); None when it does not have that shape."""
    parts = _OPTION.split(text)
    letters, texts = parts[1::2], [p.strip() for p in parts[2::2]]
    if len(letters) < 2 or letters != [chr(ord("a") + i) for i in range(len(letters))] or not all(texts):
        return None
    return parts[0].strip(), texts


def answer_index(answer: str, choices: list[str]) -> int | None:
    """Index named by an "(b) Madam" answer, only if the text after the letter is that option's."""
    m = _ANSWER.fullmatch(answer.strip())
    if not m:
        return None
    i = ord(m.group(1)) - ord("a")
    return i if i < len(choices) and choices[i] == m.group(2).strip() else None


class SakuraOptions(TaskOptions):
    tracks: str = "gender,language,emotion,animal"


class Sakura(MCQTask):
    name = "sakura"
    version = "1"
    description = "SAKURA: single- vs multi-hop reasoning over gender, language, emotion and animal sounds"
    source = f"-T data=DIR ({UPSTREAM}); HF SLLM-multi-hop/*QA not read"
    Options = SakuraOptions
    groupings = ("attribute", "hop", "cell")
    #: "upstream": the instruction as SAKURA writes it, options inline ("... (a) Female (b) Male"),
    #: lettered in the presented order (with --choices original it is the upstream text exactly)
    prompts = {"default": DEFAULT_MCQ_PROMPT, "upstream": "{question} {options_inline}"}

    def __init__(self, options: SakuraOptions | None = None):
        super().__init__(options)
        names = [t.strip().lower() for t in self.options.tracks.split(",") if t.strip()]
        unknown = [t for t in names if t not in TRACKS]
        if unknown or not names:
            raise TaskDataError(f"sakura: -T tracks={self.options.tracks!r}: unknown track(s) {unknown}; "
                                f"choose from {', '.join(TRACKS)}")
        self.tracks = list(dict.fromkeys(names))

    def render_prompt(self, p: Presentation) -> str:
        if self.options.prompt == "upstream":
            inline = " ".join(f"({LETTERS[i].lower()}) {c}" for i, c in enumerate(p.choices))
            return self.prompts["upstream"].format(question=p.sample.question, options_inline=inline)
        return super().render_prompt(p)

    def load(self) -> LoadedData:
        if not self.options.data:
            raise TaskDataError(
                "sakura: pass -T data=DIR, the data/ folder of a checkout of github ckyang1124/SAKURA "
                "(DIR/Gender/metadata.csv, DIR/Gender/audio/...); the HF SLLM-multi-hop/*QA row format "
                "has not been checked, so evalkit does not read it")
        root = Path(self.options.data).expanduser()
        samples: list[Sample] = []
        warnings: list[str] = []
        files: list[Path] = []
        for attr in self.tracks:
            folder = root / TRACKS[attr]
            rows, path = _read_track(folder)
            files.append(path)
            audio_root = Path(self.options.audio_root).expanduser() / TRACKS[attr] if self.options.audio_root \
                else folder / "audio"
            seen: set[str] = set()
            for i, row in enumerate(rows):
                where = f"{path}: row {i + 1}"
                missing = [c for c in COLUMNS if not str(row.get(c) or "").strip()]
                if missing:
                    raise TaskDataError(f"{where}: missing or empty column(s) {missing}")
                file = str(row["file"]).strip()
                if file in seen:
                    raise TaskDataError(f"{where}: duplicate file {file!r}")
                seen.add(file)
                audio = local_audio(audio_root, file, str(path), f"row {i + 1}", "file")
                audio.label = f"{TRACKS[attr]}/audio/{file}"
                for hop in HOPS:
                    split = split_instruction(str(row[f"{hop}_instruction"]))
                    if split is None:
                        raise TaskDataError(f"{where}: column {hop}_instruction has no '(a) ... (b) ...' "
                                            f"options: {row[f'{hop}_instruction']!r}")
                    question, choices = split
                    gold = answer_index(str(row[f"{hop}_answer"]), choices)
                    if gold is None:
                        warnings.append(f"{where}: {hop}_answer {row[f'{hop}_answer']!r} is not the option of "
                                        f"its letter among {choices}; {hop}-hop item skipped")
                        continue
                    samples.append(Sample(
                        id=f"{attr}/{hop}/{file}", question=question, audio=[audio], choices=choices, answer=gold,
                        group=f"{attr}/{file}",  # the pair: both hops of one clip resample together
                        metadata={"attribute": attr, "hop": hop, "cell": f"{attr}/{hop}", "file": file,
                                  "attribute_label": str(row["attribute_label"]).strip()}))
        return LoadedData(samples=samples, data_hash=hash_files(files), warnings=warnings,
                          source={"kind": "local", "path": str(root), "tracks": self.tracks,
                                  "checked_against": UPSTREAM})

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().aggregate(records)
        from evalkit.protocol.circular import collapse_rotations

        per_sample = collapse_rotations(records)
        out["metrics"][GAP] = hop_gap(per_sample)
        for attr, cell in out["groups"].get("attribute", {}).items():
            cell[GAP] = hop_gap([r for r in per_sample if (r.get("metadata") or {}).get("attribute") == attr])
        out["extra"]["gap"] = ("multi-hop minus single-hop accuracy over clips answered at both hops; 95% CI: "
                               "paired cluster bootstrap over clips")
        return out


def hop_gap(records: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Multi-hop minus single-hop accuracy (percentage points) over the clips (`cluster`) that have a
    scored record at both hops, with the paired bootstrap CI of the mean per-clip difference."""
    pairs: dict[str, dict[str, float]] = {}
    for r in records:
        score = (r.get("scores") or {}).get("accuracy")
        hop = (r.get("metadata") or {}).get("hop")
        if score is None or hop not in HOPS:
            continue
        pairs.setdefault(str(r["cluster"]), {})[hop] = float(score)
    both = sorted(c for c, p in pairs.items() if len(p) == 2)
    diffs = [pairs[c]["multi"] - pairs[c]["single"] for c in both]
    spec = MetricSpec(GAP)
    if not both:
        return {"value": None, "ci": [None, None], "n": 0, "higher_is_better": spec.higher_is_better}
    stat = Bootstrap(both, seed).mean_ci(diffs, scale=spec.scale)
    stat["higher_is_better"] = spec.higher_is_better
    return stat


def _read_track(folder: Path) -> tuple[list[dict[str, Any]], Path]:
    csv_path, json_path = folder / "metadata.csv", folder / "metadata.json"
    if csv_path.is_file():
        try:
            with open(csv_path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                absent = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
                if absent:
                    raise TaskDataError(f"{csv_path}: missing column(s) {absent}; expected {list(COLUMNS)}")
                return list(reader), csv_path
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise TaskDataError(f"cannot read {csv_path}: {e}") from None
    if json_path.is_file():
        try:
            data = loads_json(json_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise TaskDataError(f"cannot read {json_path}: {e}") from None
        if not isinstance(data, dict):
            raise TaskDataError(f"{json_path}: expected an object keyed by audio path")
        rows = []
        for key, value in data.items():
            if not isinstance(value, dict):
                raise TaskDataError(f"{json_path}: entry {key!r} is not an object")
            rows.append({**value, "file": Path(str(key)).name})
        return rows, json_path
    raise TaskDataError(f"sakura: no metadata.csv or metadata.json in {folder} (expected the track folders of "
                        f"{UPSTREAM})")
