"""SSEU-Bench (arXiv 2509.13148): speech mixed with scene/event backgrounds at controlled SNR.

Tasks (one class per registry name, one shared base; only the mode differs):
  sseu-asr        transcribe                      main metric: wer (%, lower is better)
  sseu-asc        acoustic scene classification   main metric: macc (%)
  sseu-at         audio tagging                   main metric: map (%)
  sseu-joint      all three in one response       main metric: wer; macc and map reported
  sseu-joint-cot  joint, with a five-step chain of thought before the final block

Data: `-T data=DIR`, a folder written by the SSEU builder (`evalkit data build sseu ...`)
holding `sseu.json` ({"name", "synthetic", "snrs", "scenes", "events", ...}) and
`manifest.jsonl` (one clip per row). Whether the set is synthetic is read from sseu.json
and carried in LoadedData.source and every sample's metadata.

Scoring (evalkit.tasks.sseu.scoring): `score` only parses the response (transcript, scene
text, event strings) and counts WER parts; `aggregate` embeds all scene/event
predictions in one batched, cached call (`-T embedder=minilm|openai:<model>|st:<dir>`).
ASR is not scored at SNR "-inf" (no speech); ASC and AT are not scored at "+inf"
(clean speech: no background, so no scene or events to recognise). A joint answer
that cannot be parsed is recorded with extraction_stage "unparseable_joint" and scored
as the worst case: empty transcript, no scene, no events.
Bootstrap clusters: clips sharing one speech utterance (the same utterance is mixed at
every SNR), else the clip.
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, ClassVar

from evalkit.audio import UnsafePathError, resolve_under
from evalkit.jsonio import jsonl_lines, loads_json
from evalkit.results.metrics import MetricSpec, mean_with_ci
from evalkit.tasks.base import LoadedData, Task, TaskDataError, TaskOptions, hash_files
from evalkit.types import AudioRef, Presentation, Sample

SNR_ORDER = ["+inf", "10", "5", "0", "-5", "-10", "-inf"]
BUILD_HINT = ("build one with `evalkit data build sseu ...` (see `evalkit data build sseu --help`), "
              "or point data= at the offline synthetic set `sseu-synth`")


class SSEUOptions(TaskOptions):
    embedder: str = "minilm"


def _scene_list(scenes: list[str]) -> str:
    return "\n".join(f"- {_h(s)}" for s in scenes)


def _h(label: str) -> str:
    return " ".join(str(label).replace("_", " ").split())


ASR_PROMPT = ("Transcribe the speech in the audio. Reply with the transcript only, "
              "without any other words. If there is no speech, reply \"(no speech)\".")
ASC_PROMPT = ("Which acoustic scene is the background of this recording? Choose one of:\n{scenes}\n\n"
              "Answer with the scene name only.")
AT_PROMPT = ("Which of the following sound events occur in the background of this recording?\n{events}\n\n"
             "Answer with the events present as a comma-separated list, or \"none\".")
JOINT_FORMAT = ("Transcript: <the transcript, or (no speech)>\n"
                "Scene: <one scene name>\n"
                "Events: <comma-separated event names, or none>")
JOINT_PROMPT = ("Analyse this recording and do three things:\n"
                "1. Transcribe the speech.\n"
                "2. Classify the acoustic scene of the background, choosing one of: {scenes_inline}.\n"
                "3. List the sound events in the background, chosen from: {events_inline}.\n\n"
                "Answer in exactly this format, three lines:\n" + JOINT_FORMAT)
JOINT_COT_PROMPT = ("Analyse this recording step by step.\n"
                    "Step 1 (energy and onset): describe the energy over time and when sounds start and stop.\n"
                    "Step 2 (transcription): transcribe the speech.\n"
                    "Step 3 (scene candidates): rank the most likely acoustic scenes from: {scenes_inline}.\n"
                    "Step 4 (event candidates): rank the most likely sound events from: {events_inline}.\n"
                    "Step 5 (correction): cross-check the scene against the events; keep one scene and only "
                    "the events consistent with it.\n\n"
                    "Then write \"Final answer:\" followed by exactly these three lines:\n" + JOINT_FORMAT)


class SSEUTask(Task):
    """Shared SSEU-Bench task; subclasses set `mode`."""

    mode: ClassVar[str] = "joint"
    version = "1"
    source = "local SSEU-Bench folder (sseu.json + manifest.jsonl)"
    Options = SSEUOptions
    groupings = ("snr",)
    prompts: ClassVar[dict[str, str]] = {}

    def __init__(self, options: TaskOptions | None = None):
        super().__init__(options)
        if self.options.prompt not in self.prompts:
            raise TaskDataError(f"{self.name}: unknown prompt variant {self.options.prompt!r}; "
                                f"choose one of {', '.join(self.prompts)}")
        self._embedder = None

    # ------------------------------------------------------------------ loading
    def load(self) -> LoadedData:
        if not self.options.data:
            raise TaskDataError(f"{self.name} needs -T data=DIR, a folder with sseu.json and manifest.jsonl; "
                                + BUILD_HINT)
        root = Path(self.options.data).expanduser()
        meta_path, man_path = root / "sseu.json", root / "manifest.jsonl"
        for p in (meta_path, man_path):
            if not p.is_file():
                raise TaskDataError(f"{self.name}: {p} not found; {BUILD_HINT}")
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as e:
            raise TaskDataError(f"{meta_path}: not valid JSON ({e})") from None
        for key in ("scenes", "events"):
            if not isinstance(meta.get(key), list) or not meta[key]:
                raise TaskDataError(f"{meta_path}: field {key!r} must be a non-empty list")
        synthetic = bool(meta.get("synthetic", False))
        scenes, events = [str(s) for s in meta["scenes"]], [str(e) for e in meta["events"]]
        event_set = set(events)
        audio_root = Path(self.options.audio_root).expanduser() if self.options.audio_root else root
        question = self.render_text(scenes, events)
        samples: list[Sample] = []
        warnings: list[str] = []
        unknown: Counter = Counter()
        try:
            text = man_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TaskDataError(f"cannot read {man_path}: {e}") from None
        for ln, line in jsonl_lines(text):  # "\n" only, as every JSONL evalkit reads
            try:
                row = loads_json(line)
            except ValueError as e:
                raise TaskDataError(f"{man_path}:{ln}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise TaskDataError(f"{man_path}:{ln}: record is a {type(row).__name__}, not an object")
            for key in ("id", "audio", "snr"):
                if key not in row:
                    raise TaskDataError(f"{man_path}:{ln}: record has no {key!r} field")
            snr = str(row["snr"])
            if snr not in SNR_ORDER:
                raise TaskDataError(f"{man_path}:{ln} (id {row['id']}): snr {snr!r} is not one of {SNR_ORDER}")
            try:
                path = resolve_under(audio_root, row["audio"])
            except UnsafePathError as e:
                raise TaskDataError(f"{man_path}:{ln} (id {row['id']}): {e}") from None
            labels = []
            for ev in row.get("events") or []:
                lab = ev.get("label") if isinstance(ev, dict) else str(ev)
                if lab in event_set:
                    if lab not in labels:
                        labels.append(lab)
                else:
                    unknown[lab] += 1
            scene = str(row.get("scene") or "")
            samples.append(Sample(
                id=str(row["id"]),
                question=question,
                audio=[AudioRef(path=path, label=f"{meta.get('name', root.name)}/{row['audio']}")],
                target={"transcript": row.get("transcript") or "", "scene": scene, "events": labels,
                        "scene_classes": scenes, "event_classes": events},
                metadata={"snr": snr, "snr_db": row.get("snr_db"), "scene": scene, "synthetic": synthetic,
                          "speaker": row.get("speaker")},
                group=str(row.get("speech_source") or row["id"]),
            ))
        if not samples:
            raise TaskDataError(f"{man_path}: no records")
        if unknown:
            warnings.append(f"{sum(unknown.values())} event annotations with labels not in sseu.json 'events' "
                            f"were ignored: {dict(unknown.most_common(5))}")
        return LoadedData(samples=samples,
                          source={"kind": "local", "path": str(root.resolve()), "name": meta.get("name"),
                                  "synthetic": synthetic, "snrs": meta.get("snrs"),
                                  "scenes": scenes, "events": events},
                          data_hash=hash_files([meta_path, man_path]), warnings=warnings)

    # ------------------------------------------------------------------ prompting
    _classes: tuple[list[str], list[str]] | None = None

    def render_text(self, scenes: list[str] | None = None, events: list[str] | None = None) -> str:
        if scenes is None or events is None:
            scenes, events = self._class_lists()
        return self.prompts[self.options.prompt].format(
            scenes=_scene_list(scenes), events=_scene_list(events),
            scenes_inline=", ".join(_h(s) for s in scenes), events_inline=", ".join(_h(e) for e in events))

    def _class_lists(self) -> tuple[list[str], list[str]]:
        if self._classes is None:
            meta = json.loads((Path(self.options.data).expanduser() / "sseu.json").read_text())
            self._classes = ([str(s) for s in meta["scenes"]], [str(e) for e in meta["events"]])
        return self._classes

    def prompt(self, p: Presentation) -> list[dict[str, Any]]:
        t = p.sample.target
        text = self.render_text(t.get("scene_classes"), t.get("event_classes")) if t.get("scene_classes") \
            else p.sample.question
        return self.user_message(p, text)

    # ------------------------------------------------------------------ scoring
    def parse(self, record: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """(parsed answer, stage). Worst case on errors / unparseable output."""
        from evalkit.tasks.sseu.scoring import parse_event_list, parse_joint, scene_text

        empty = {"transcript": "", "scene": "", "events": []}
        if record.get("error") is not None:
            return empty, "error"
        out = record.get("output")
        if out is None or not str(out).strip():
            # an empty transcript is a valid ASR answer (the right one for background-only clips)
            return empty, ("text" if self.mode == "asr" else "empty")
        text = str(out).strip()
        if self.mode == "asr":
            return {**empty, "transcript": re.sub(r"^\s*(?:transcript(?:ion)?)\s*[:：]\s*", "", text, flags=re.I)}, \
                "text"
        if self.mode == "asc":  # the first line that names something (a preamble line abstains, the next counts)
            return {**empty, "scene": scene_text(text)}, "text"
        if self.mode == "at":
            return {**empty, "events": parse_event_list(text)}, "text"
        parsed, stage = parse_joint(text)
        if parsed is None:
            return empty, stage
        parsed.pop("_found", None)
        return parsed, stage

    def score(self, record: dict[str, Any]) -> dict[str, Any]:
        from evalkit.tasks.sseu.scoring import NO_SPEECH_SNR, wer_parts

        parsed, stage = self.parse(record)
        scores: dict[str, float | None] = {}
        snr = str(record.get("metadata", {}).get("snr"))
        if self.mode in ("asr", "joint"):
            parts = None if snr == NO_SPEECH_SNR else wer_parts(record["target"].get("transcript"),
                                                                 parsed["transcript"])
            scores["wer_errors"] = None if parts is None else float(parts[0])
            scores["wer_words"] = None if parts is None else float(parts[1])
        if self.mode == "joint":
            scores["parse_failure"] = float(stage in ("unparseable_joint", "empty"))
        extracted = {k: parsed[k] for k in self._fields()}
        return {"extracted": extracted, "extraction_stage": stage, "scores": scores}

    def _fields(self) -> tuple[str, ...]:
        return {"asr": ("transcript",), "asc": ("scene",), "at": ("events",)}.get(
            self.mode, ("transcript", "scene", "events"))

    def embedder(self):
        if self._embedder is None:
            from evalkit.text_embedders import get_embedder

            self._embedder = get_embedder(self.options.embedder)
        return self._embedder

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        import numpy as np

        from evalkit.tasks.sseu import scoring as S

        fields = self._fields()
        parsed = []
        for r in records:
            ex = r.get("extracted")
            if not isinstance(ex, dict) or not all(k in ex for k in fields):
                ex = self.score(r)["extracted"]
            parsed.append(ex)
        snrs = [str(r.get("metadata", {}).get("snr")) for r in records]
        clusters = [str(r.get("cluster", r.get("sample_id"))) for r in records]

        # per-record columns computed once, subset per group
        cols: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        if "transcript" in fields:
            e = [(r.get("scores") or {}).get("wer_errors") for r in records]
            w = [(r.get("scores") or {}).get("wer_words") for r in records]
            cols["wer"] = [i for i in range(len(records)) if e[i] is not None and w[i]]
            cols["wer_e"], cols["wer_w"] = e, w
        scenes, events = self._record_classes(records)
        bg = [i for i, s in enumerate(snrs) if s != S.NO_BACKGROUND_SNR]
        if "scene" in fields:
            sidx = {s: j for j, s in enumerate(scenes)}
            idx = [i for i in bg if records[i]["target"].get("scene") in sidx]
            conf = S.scene_confidences([parsed[i]["scene"] for i in idx], scenes, self.embedder())
            ls, has = S.label_scores_matrix([_label_scores(records[i]) for i in idx], scenes)
            conf[has] = ls[has]
            pred = np.where(conf.max(axis=1) > 0, conf.argmax(axis=1), -1) if len(idx) else np.zeros(0, int)
            cols["asc"] = idx
            cols["asc_true"] = {i: sidx[records[i]["target"]["scene"]] for i in idx}
            cols["asc_pred"] = dict(zip(idx, (int(x) for x in pred)))
            extra["scene_predictions"] = {scenes[j] if j >= 0 else "(none)": int(c)
                                          for j, c in sorted(Counter(int(x) for x in pred).items())}
        if "events" in fields:
            eidx = {e: j for j, e in enumerate(events)}
            idx = bg
            sc = S.event_scores([parsed[i]["events"] for i in idx], events, self.embedder())
            ls, has = S.label_scores_matrix([_label_scores(records[i]) for i in idx], events)
            sc[has] = ls[has]
            Y = np.zeros((len(idx), len(events)))
            for row, i in enumerate(idx):
                for lab in records[i]["target"].get("events") or []:
                    if lab in eidx:
                        Y[row, eidx[lab]] = 1
            cols["at"] = idx
            cols["at_row"] = {i: row for row, i in enumerate(idx)}
            cols["at_Y"], cols["at_S"] = Y, sc

        def compute(subset: set[int]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            if "wer" in cols:
                ii = [i for i in cols["wer"] if i in subset]
                out["wer"] = S.wer_metric([cols["wer_e"][i] for i in ii], [cols["wer_w"][i] for i in ii],
                                          [clusters[i] for i in ii])
            if "asc" in cols:
                ii = [i for i in cols["asc"] if i in subset]
                out["macc"] = S.macc_metric([cols["asc_true"][i] for i in ii], [cols["asc_pred"][i] for i in ii],
                                            [clusters[i] for i in ii])
            if "at" in cols:
                ii = [i for i in cols["at"] if i in subset]
                rows = [cols["at_row"][i] for i in ii]
                out["map"] = S.map_metric(cols["at_Y"][rows], cols["at_S"][rows], [clusters[i] for i in ii])
            if self.mode == "joint":
                ii = sorted(subset)
                vals = [(records[i].get("scores") or {}).get("parse_failure") for i in ii]
                pairs = [(v, clusters[i]) for v, i in zip(vals, ii) if v is not None]
                pf = mean_with_ci([v for v, _ in pairs], [c for _, c in pairs], 100.0, n_boot=200)
                pf["higher_is_better"] = False
                out["parse_failure"] = pf
            return out

        metrics = compute(set(range(len(records))))
        by_snr: dict[str, set[int]] = defaultdict(set)
        for i, s in enumerate(snrs):
            by_snr[s].add(i)
        order = {s: k for k, s in enumerate(SNR_ORDER)}
        groups = {"snr": {s: compute(by_snr[s]) for s in sorted(by_snr, key=lambda s: order.get(s, 99))}}
        stages = Counter(r.get("extraction_stage") or "unscored" for r in records)
        extra.update({"extraction_stages": dict(sorted(stages.items())),
                      "embedder": self.options.embedder if ("scene" in fields or "events" in fields) else None,
                      "not_scored": {"asr": "snr -inf (no speech)", "asc_at": "snr +inf (no background)"},
                      "synthetic": sorted({bool(r.get("metadata", {}).get("synthetic")) for r in records})})
        return {"metrics": metrics, "groups": groups, "extra": extra}

    def _record_classes(self, records) -> tuple[list[str], list[str]]:
        for r in records:
            t = r.get("target") or {}
            if t.get("scene_classes") and t.get("event_classes"):
                return list(t["scene_classes"]), list(t["event_classes"])
        return self._class_lists()


def _label_scores(record: dict[str, Any]) -> dict[str, float] | None:
    ex = record.get("extra") or {}
    ls = ex.get("label_scores")
    return ls if isinstance(ls, dict) and record.get("error") is None else None


class SSEUASR(SSEUTask):
    name = "sseu-asr"
    mode = "asr"
    description = "SSEU-Bench ASR: speech over scene/event backgrounds at controlled SNR (WER)"
    main_metric = "wer"
    metric_specs = (MetricSpec("wer", higher_is_better=False),)
    prompts = {"default": ASR_PROMPT}


class SSEUASC(SSEUTask):
    name = "sseu-asc"
    mode = "asc"
    description = "SSEU-Bench acoustic scene classification under speech (mACC, embedding-matched)"
    main_metric = "macc"
    metric_specs = (MetricSpec("macc"),)
    prompts = {"default": ASC_PROMPT}


class SSEUAT(SSEUTask):
    name = "sseu-at"
    mode = "at"
    description = "SSEU-Bench audio tagging under speech (mAP, embedding-matched)"
    main_metric = "map"
    metric_specs = (MetricSpec("map"),)
    prompts = {"default": AT_PROMPT}


class SSEUJoint(SSEUTask):
    name = "sseu-joint"
    mode = "joint"
    description = "SSEU-Bench joint ASR + scene + events in one response"
    main_metric = "wer"
    metric_specs = (MetricSpec("wer", higher_is_better=False), MetricSpec("macc"), MetricSpec("map"),
                    MetricSpec("parse_failure", higher_is_better=False))
    prompts = {"default": JOINT_PROMPT, "cot": JOINT_COT_PROMPT}


class SSEUJointCoT(SSEUJoint):
    name = "sseu-joint-cot"
    description = "SSEU-Bench joint task with a five-step chain-of-thought prompt"
    prompts = {"default": JOINT_COT_PROMPT}
