"""MMSU (dingdongwang/MMSU): 5000 spoken-language understanding and reasoning
MCQs over 47 tasks, audio at 16 kHz.

Data, either:
- the hub: `ddwang2000/MMSU`, config default, split `train` (audio embedded);
- local: `-T data=` a parquet file or a folder of parquet shards (the HF
  snapshot, e.g. `data/train-0000x-of-00003.parquet`), read with pyarrow. The
  `audio` column is a struct with `bytes` / `path` (or `array` +
  `sampling_rate`); bytes are used as they are, a bare relative path resolves
  under `-T audio_root` (default: the parquet's folder).

Fields: id, task_name, audio, question, choice_a..choice_d, answer_gt,
category (Perception/Reasoning), sub-category, sub-sub-category,
linguistics_sub_discipline. Padding options (Python None or "") are dropped,
so some items have two or three choices; the literal string "None" is kept,
since it can be a real option (unverified upstream). With `-T prompt=upstream`
every position is kept, as upstream's prompt shows it (a null option prints as
"None", a blank one as nothing), so the model sees upstream's four options. An answer_gt that is not
among the choices is a loader warning and the item is skipped. Repeated ids
are made unique with a "#n" suffix (with a warning), since the engine keys
records by id; the suffix never takes an id the data holds (`unique_ids`).
Float NaN values (a pandas export's missing value) are read as None: a NaN
option is padding, a NaN category no group.

Prompts: "default" (evalkit's) or "upstream" (the official MMSU inference
prompt). Official scorer: `mmsu_official` (letter at p[0] or p[-2], "wrong
format" left out of the denominator; see tasks/official.py).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evalkit.tasks.base import (
    DEFAULT_MCQ_PROMPT,
    HubTaskOptions,
    LoadedData,
    MCQTask,
    TaskDataError,
    hash_files,
)
from evalkit.tasks.loaders import without_nonfinite
from evalkit.tasks.official import MMSU_UPSTREAM, mmsu_official, mmsu_upstream_fields
from evalkit.types import Sample

HUB_REPO = "ddwang2000/MMSU"
# NOT PINNED: no commit sha for ddwang2000/MMSU could be looked up offline. Pin
# it; until then the resolved sha is recorded in LoadedData.source.
HUB_REVISION = "main"
HUB_SPLIT = "train"

UPSTREAM_PROMPT = ("Choose the most suitable answer from options A, B, C, and D. You must respond with only A, "
                   "B, C, or D.\n\nQuestion: {question}\n\n{options_dot}")
CHOICE_FIELDS = ("choice_a", "choice_b", "choice_c", "choice_d")


class MMSU(MCQTask):
    name = "mmsu"
    version = "1"
    description = "MMSU: 5000 spoken-language understanding and reasoning MCQs over 47 tasks"
    source = f"hf:{HUB_REPO}@{HUB_REVISION} (split train) or -T data=PARQUET|DIR"
    Options = HubTaskOptions
    groupings = ("category", "sub-category", "sub-sub-category", "axis", "task_name")
    prompts = {"default": DEFAULT_MCQ_PROMPT, "upstream": UPSTREAM_PROMPT}
    official = mmsu_official

    def load(self) -> LoadedData:
        if self.options.data:
            path = Path(self.options.data).expanduser()
            files = _parquet_files(path)
            root = Path(self.options.audio_root).expanduser() if self.options.audio_root else \
                (path if path.is_dir() else path.parent)
            samples, warnings = self._samples(_parquet_rows(files, path), root)
            return LoadedData(samples=samples, data_hash=hash_files(files), warnings=warnings,
                              source={"kind": "local", "path": str(path), "files": [str(f) for f in files]})
        from evalkit.hub import hub_data_hash, hub_source, load_hub_rows

        revision = self.options.revision or HUB_REVISION
        rows = load_hub_rows(HUB_REPO, revision, HUB_SPLIT)
        where = f"hf:{HUB_REPO}@{revision}"
        root = Path(self.options.audio_root).expanduser() if self.options.audio_root else None
        samples, warnings = self._samples(((where, i, dict(r)) for i, r in enumerate(rows)), root)
        return LoadedData(samples=samples, source=hub_source(HUB_REPO, revision, HUB_SPLIT),
                          data_hash=hub_data_hash(rows, HUB_REPO, revision), warnings=warnings)

    def _samples(self, rows, root: Path | None) -> tuple[list[Sample], list[str]]:
        from evalkit.audio import UnsafePathError
        from evalkit.hub import audio_from_hub

        # the upstream prompt always lists A-D, padding included; evalkit's own drops padding
        keep_padding = self.options.prompt == "upstream"
        samples: list[Sample] = []
        labels: list[str] = []  # "<where>: <label>" of each sample, for the renaming warnings
        warnings: list[str] = []
        for where, i, row in rows:
            row = without_nonfinite(row)  # a pandas export's NaN is a missing value, not "nan"
            rid_raw = row.get("id")
            label = f"record {i}" + (f" (id {rid_raw!r})" if rid_raw is not None else "")
            if rid_raw is None or str(rid_raw).strip() == "":
                raise TaskDataError(f"{where}: {label}: missing field 'id'")
            rid = str(rid_raw)
            question = row.get("question")
            if not isinstance(question, str) or not question.strip():
                raise TaskDataError(f"{where}: {label}: missing field 'question'")
            choices, letters = [], []  # letters: the upstream letter of each option shown
            n_real = 0
            for letter, f in zip("ABCD", CHOICE_FIELDS):
                v = row.get(f)
                if v is None or (isinstance(v, str) and v.strip() == ""):
                    if not keep_padding:
                        continue  # padding; the string "None" is kept as a real option
                    choices.append("None" if v is None else "")  # as upstream's f"C. {None}" prints it
                else:
                    choices.append(str(v).strip())
                    n_real += 1
                letters.append(letter)
            if n_real < 2:
                raise TaskDataError(f"{where}: {label}: fields choice_a..choice_d hold fewer than two options")
            answer = row.get("answer_gt")
            if answer is None or str(answer).strip() == "":
                raise TaskDataError(f"{where}: {label}: missing field 'answer_gt'")
            answer = str(answer).strip()
            gold = next((j for j, c in enumerate(choices) if c == answer), None)
            if gold is None:
                warnings.append(f"{where}: {label}: answer_gt {answer!r} is not among the choices {choices}; "
                                f"item skipped")
                continue
            audio_value = row.get("audio")
            if audio_value is None:
                raise TaskDataError(f"{where}: {label}: missing field 'audio'")
            try:
                audio = audio_from_hub(audio_value, root=root)
            except (ValueError, UnsafePathError) as e:
                raise TaskDataError(f"{where}: {label}: field 'audio': {e}") from None
            category = row.get("category")
            samples.append(Sample(
                id=rid, question=question, audio=[audio], choices=choices, answer=gold,
                metadata={
                    "task_name": row.get("task_name"),
                    "category": category,
                    "sub-category": row.get("sub-category"),
                    "sub-sub-category": row.get("sub-sub-category"),
                    "linguistics_sub_discipline": row.get("linguistics_sub_discipline"),
                    "axis": category.strip().lower() if isinstance(category, str) and category.strip() else None,
                    MMSU_UPSTREAM: mmsu_upstream_fields(row, letters),  # what mmsu_official compares
                }))
            labels.append(f"{where}: {label}")
        for s, label, new_id in zip(samples, labels, unique_ids([s.id for s in samples])):
            if new_id != s.id:
                warnings.append(f"{label}: duplicate id {s.id!r}; renamed to {new_id!r}")
                s.id = new_id
        return samples, warnings


def unique_ids(ids: list[str]) -> list[str]:
    """The ids made unique, deterministically: the first occurrence of an id keeps it; each later
    one becomes "<id>#<n>" with the smallest n >= 2 that is neither an id in the data nor already
    given. So x, x, x#2 -> x, x#3, x#2: an id the data holds is never taken by a renamed one."""
    taken = set(ids)
    seen: set[str] = set()
    out = []
    for rid in ids:
        if rid not in seen:
            seen.add(rid)
            out.append(rid)
            continue
        n = 2
        while f"{rid}#{n}" in taken:
            n += 1
        new = f"{rid}#{n}"
        taken.add(new)
        out.append(new)
    return out


def _parquet_files(path: Path) -> list[Path]:
    if not path.exists():
        raise TaskDataError(f"data file or folder not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise TaskDataError(f"no .parquet files under {path}")
        return files
    return [path]


def _parquet_rows(files: list[Path], base: Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskDataError("reading MMSU parquet needs pyarrow: pip install 'evalkit[hub]'") from None
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:
            raise TaskDataError(f"{f}: not a readable parquet file: {e}") from None
        i = 0
        for batch in pf.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                yield str(f), i, row
                i += 1
