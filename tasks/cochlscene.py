"""CochlScene: acoustic scene classification (13 classes, 10 s clips at 44.1 kHz),
asked as one 13-option multiple-choice question, the protocol common in LALM
evaluation (Kimi-Audio-Evalkit), Test and Val scored separately.

Data: Zenodo record 7080122 (a split zip: CochlScene.z01..z05 + CochlScene.zip;
`zip -s 0 CochlScene.zip --out full.zip && unzip full.zip`). Pass the extracted
`CochlScene` folder, which holds `{Train,Val,Test}/<Class>/*.wav`:
`-T data=/path/to/CochlScene -T split=Test`. Not on the Hugging Face Hub.

Beyond accuracy, `aggregate` reports in `metrics` the macro accuracy (mean of
per-class accuracies) and in `extra` per-class precision/recall/F1
(scikit-learn, as the dataset's own baseline) and the confusion matrix, whose
predicted labels come from the extracted answer mapped back to its class; an
extraction failure is its own "none" column. Circular runs use rotation 0 for
the confusion matrix; accuracy follows the protocol (all rotations).
The data hash covers the sorted relative file list with sizes, not the audio bytes.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from evalkit.protocol.choices import LETTERS
from evalkit.protocol.circular import collapse_rotations
from evalkit.tasks.base import (
    LoadedData,
    MCQTask,
    TaskDataError,
    TaskOptions,
)
from evalkit.types import AudioRef, Sample

CLASSES = ("Bus", "Cafe", "Car", "CrowdedIndoor", "Elevator", "Kitchen", "Park", "ResidentialArea",
           "Restaurant", "Restroom", "Street", "Subway", "SubwayStation")
CHOICES = [c.lower() for c in CLASSES]
QUESTION = "Identify the acoustic scene in the audio."
ZENODO = "https://zenodo.org/records/7080122"
AUDIO_EXTENSIONS = {".wav", ".flac"}


class CochlSceneOptions(TaskOptions):
    split: Literal["Test", "Val"] = "Test"


class CochlScene(MCQTask):
    name = "cochlscene"
    version = "1"
    description = "CochlScene: acoustic scene classification (13 classes) as a 13-option MCQ"
    source = f"local folder (-T data=DIR/CochlScene) from Zenodo record 7080122 ({ZENODO})"
    Options = CochlSceneOptions
    groupings = ("class",)

    def load(self) -> LoadedData:
        if not self.options.data:
            raise TaskDataError(
                f"cochlscene: the data is not on the Hugging Face Hub. Download the split zip from Zenodo "
                f"record 7080122 ({ZENODO}: CochlScene.z01..z05 and CochlScene.zip), join and extract it "
                f"(zip -s 0 CochlScene.zip --out full.zip && unzip full.zip), then pass the folder holding "
                f"Train/Val/Test: -T data=/path/to/CochlScene")
        root = Path(self.options.data).expanduser()
        split = self.options.split
        split_dir = root / split
        if not split_dir.is_dir():
            if (root / "CochlScene" / split).is_dir():
                root, split_dir = root / "CochlScene", root / "CochlScene" / split
            else:
                raise TaskDataError(f"cochlscene: {split_dir} not found; -T data must be the CochlScene folder "
                                    f"holding Train/, Val/ and Test/")
        warnings: list[str] = []
        known = {c.lower(): c for c in CLASSES}
        for d in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if d.name.lower() not in known:
                warnings.append(f"{split_dir}: unknown class folder {d.name!r} ignored")
        samples: list[Sample] = []
        listing = hashlib.sha256()
        for ci, cls in enumerate(CLASSES):
            cdir = split_dir / cls
            if not cdir.is_dir():
                warnings.append(f"{split_dir}: class folder {cls!r} missing")
                continue
            for f in sorted(p for p in cdir.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS):
                rel = f.relative_to(root).as_posix()
                listing.update(f"{rel}\t{f.stat().st_size}\n".encode())
                samples.append(Sample(id=rel, question=QUESTION, audio=[AudioRef(path=f)], choices=list(CHOICES),
                                      answer=ci, metadata={"class": cls, "split": split}))
        if not samples:
            raise TaskDataError(f"cochlscene: no audio files under {split_dir}/<Class>/")
        return LoadedData(samples=samples, data_hash="sha256:" + listing.hexdigest(), warnings=warnings,
                          source={"kind": "local", "path": str(root), "split": split, "zenodo": "7080122"})

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().aggregate(records)
        per_sample = collapse_rotations(records)
        by_class: dict[str, list[float]] = defaultdict(list)
        for r in per_sample:
            cls = (r.get("metadata") or {}).get("class")
            acc = (r.get("scores") or {}).get("accuracy")
            if cls is not None and acc is not None:
                by_class[cls].append(acc)
        per_class_acc = {c: sum(v) / len(v) for c, v in sorted(by_class.items())}
        macro = sum(per_class_acc.values()) / len(per_class_acc) if per_class_acc else None
        out["metrics"]["macro_accuracy"] = {
            "value": round(macro * 100, 4) if macro is not None else None, "ci": [None, None],
            "n": sum(len(v) for v in by_class.values()), "higher_is_better": True}
        out["extra"].update(classification_report(records))
        out["extra"]["per_class_accuracy"] = {c: round(a * 100, 4) for c, a in per_class_acc.items()}
        return out


def predicted_class(record: dict[str, Any]) -> str:
    """The class the extracted answer names, or "none" (extraction failure / error)."""
    letter = record.get("extracted")
    choices = record.get("choices") or []
    if not letter or letter not in LETTERS or LETTERS.index(letter) >= len(choices):
        return "none"
    text = choices[LETTERS.index(letter)]
    return {c.lower(): c for c in CLASSES}.get(str(text).lower(), "none")


def classification_report(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-class precision/recall/F1 and the confusion matrix (rows: true class,
    columns: predicted class plus "none")."""
    recs = [r for r in records if (r.get("rotation") or 0) == 0 and (r.get("metadata") or {}).get("class")]
    if not recs:
        return {}
    y_true = [r["metadata"]["class"] for r in recs]
    y_pred = [predicted_class(r) for r in recs]
    labels = list(CLASSES)
    columns = labels + ["none"]
    idx = {c: i for i, c in enumerate(columns)}
    matrix = [[0] * len(columns) for _ in labels]
    for t, p in zip(y_true, y_pred):
        matrix[idx[t]][idx[p]] += 1
    out: dict[str, Any] = {"confusion_matrix": {"labels": labels, "columns": columns, "matrix": matrix}}
    try:
        from sklearn.metrics import precision_recall_fscore_support
    except ImportError:
        out["per_class_note"] = "per-class precision/recall/F1 need scikit-learn: pip install 'evalkit[sseu]'"
        return out
    import warnings

    with warnings.catch_warnings():  # "none" predictions are outside `labels` on purpose
        warnings.simplefilter("ignore", UserWarning)
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        seen = [c for c in labels if c in set(y_true)]  # macro over the classes present (e.g. under --limit)
        mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=seen, average="macro",
                                                        zero_division=0)
    out["per_class"] = {c: {"precision": round(float(p[i]) * 100, 4), "recall": round(float(r[i]) * 100, 4),
                            "f1": round(float(f[i]) * 100, 4), "support": int(s[i])}
                        for i, c in enumerate(labels)}
    out["macro_precision"], out["macro_recall"], out["macro_f1"] = (round(float(x) * 100, 4) for x in (mp, mr, mf))
    return out
