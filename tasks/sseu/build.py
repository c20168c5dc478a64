"""SSEU-Bench-style builder (Yin & Choi, arXiv 2509.13148): clean VCTK speech mixed with a
non-speech background from DESED (scene "home") or MAESTRO-Real (five outdoor/public scenes) at
SNRs +inf, 10, 5, 0, -5, -10, -inf dB; mono, 44.1 kHz.

Two entry points:

- `build(vctk, desed, maestro, out, snrs, seed, limit)`: from the real corpora.
- `build_synthetic(out, seed, snrs, n_pairs)`: "sseu-synth", an offline, clearly SYNTHETIC set
  (espeak-ng sentences shipped in `tasks/sseu/synth/` + procedurally generated scene
  backgrounds). Every row says `synthetic: true` and every id starts with `synth-`.

Both write `OUT/clips/<id>.flac`, `OUT/manifest.jsonl` (one row per clip, format below) and
`OUT/sseu.json`, through the same mixer (`evalkit.tasks.sseu.mixing`, power definition documented there).

Choices (documented, since the paper does not publish them)
-----------------------------------------------------------
- Pairs: every background item is used once (DESED public-eval clips without a `Speech` event,
  the paper's 378; MAESTRO-Real development recordings cut into non-overlapping 10-s windows,
  the DCASE 2024 window length). Each background gets one VCTK utterance: speakers are visited
  in a seeded random order, round robin, and each speaker's utterances are drawn without
  replacement. Pairs are ordered round robin over scenes so that `--limit N` stays balanced.
- Mixture length = the speech length; the background is cut at a seeded offset (or looped with
  a 50-ms equal-power crossfade when shorter), see `evalkit.tasks.sseu.mixing.fit_background`.
- Speech is normalized to -25 dBFS active level; the background gain sets the SNR; one common
  gain avoids clipping. `-inf` keeps the background at its 0-dB level.
- Event classes: candidate A of `SSEU_EVENT_CLASSES.md` by default (9 DESED non-speech + 9
  MAESTRO-Real hard non-speech classes), overridable with `event_classes="B"` or a TSV path
  (columns `class` and `source_labels`, labels `|`-separated). Background labels outside the
  list (Speech, people talking, children voices, soft-only MAESTRO classes) are dropped from
  `events`; the sound itself stays in the background.
- MAESTRO-Real labels: soft labels `development_annotation/soft_labels_<scene>/<stem>.txt`
  thresholded at > 0.5 (the DCASE 2023 4B rule), else the baseline's hard labels `gt_dev.csv`;
  consecutive 1-s segments are merged into events.
- VCTK: 0.92 (`wav48_silence_trimmed/<spk>/<spk>_<utt>_mic1.flac`) or 0.80
  (`wav48/<spk>/<spk>_<utt>.wav`); transcripts `txt/<spk>/<spk>_<utt>.txt` (first line). A
  speaker with no `txt/<spk>/` folder at all (p315, "Text unavailable") is skipped; a selected
  utterance whose transcript file is missing or empty is an error naming the file.

Manifest row: {"id", "audio", "snr", "snr_db", "transcript", "scene", "events", "speech_source",
"background_source", "background_segment", "speaker", "gains", "measured_snr_db",
"sample_rate", "duration_s", "synthetic"}.

Resume: clips are written to a temp name and renamed; a manifest row is appended (and flushed)
only after its clip exists; a restart skips ids already in the manifest. `OUT/.sseu_build_state.json`
holds a hash of the plan (sources, pairs, offsets, SNRs, classes, version); a restart with
different arguments is refused.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from evalkit.tasks.base import BuilderOptions, DataBuilder
from evalkit.tasks.sseu import mixing

BUILDER_VERSION = "1.0"
SAMPLE_RATE = 44100
SNR_LABELS = ["+inf", "10", "5", "0", "-5", "-10", "-inf"]
SCENES = ["home", "restaurant", "city center", "grocery store", "metro station", "residential area"]
MAESTRO_SCENES = {
    "cafe_restaurant": "restaurant",
    "city_center": "city center",
    "grocery_store": "grocery store",
    "metro_station": "metro station",
    "residential_area": "residential area",
}
MAESTRO_WINDOW_S = 10.0
MAESTRO_SOFT_THRESHOLD = 0.5
STATE_FILE = ".sseu_build_state.json"
SYNTH_DIR = Path(__file__).resolve().parent / "synth"

POWER_DEFINITION = (
    "SNR = 10 log10(P_speech / P_background); both powers are mean squares over the active region of the "
    "speech (20-ms frames within 40 dB of the loudest speech frame); the background is measured over the "
    "same samples of the mixture window. Speech at -25 dBFS active level; -inf keeps the 0-dB background "
    "level; one common gain (peak <= 0.98) is applied to the sum. See tasks/sseu/mixing.py."
)

# The derived class table (copied from shared/data/sseu_sources/sseu_event_classes_derived.tsv, with the
# candidate-B merges made explicit). DERIVED, NOT VERIFIED against the paper.
_CLASS_TABLE = """class\tsource_labels_A\tsource_labels_B
Alarm_bell_ringing\tAlarm_bell_ringing\tAlarm_bell_ringing
Blender\tBlender\tBlender
Cat\tCat\tCat
Dishes\tDishes\tDishes|cutlery and dishes
Dog\tDog\tDog
Electric_shaver_toothbrush\tElectric_shaver_toothbrush\tElectric_shaver_toothbrush
Frying\tFrying\tFrying
Running_water\tRunning_water\tRunning_water
Vacuum_cleaner\tVacuum_cleaner\tVacuum_cleaner
Speech\t\tSpeech|people talking|children voices
birds_singing\tbirds_singing\tbirds_singing
brakes_squeaking\tbrakes_squeaking\tbrakes_squeaking
car\tcar\tcar
cutlery and dishes\tcutlery and dishes\t
footsteps\tfootsteps\tfootsteps
large_vehicle\tlarge_vehicle\tlarge_vehicle
metro approaching\tmetro approaching\tmetro approaching
metro leaving\tmetro leaving\tmetro leaving
wind_blowing\twind_blowing\twind_blowing
"""
CLASS_SOURCE = {
    "A": "derived candidate A (9 DESED non-speech + 9 MAESTRO-Real hard non-speech classes), "
         "shared/data/sseu_sources/SSEU_EVENT_CLASSES.md; NOT VERIFIED against the paper",
    "B": "derived candidate B (DESED 10 + MAESTRO-Real hard, overlaps merged into Speech/Dishes), "
         "shared/data/sseu_sources/SSEU_EVENT_CLASSES.md; NOT VERIFIED against the paper",
}


class SSEUBuildError(ValueError):
    """A build that cannot proceed; the message names the file or argument."""


# ---------------------------------------------------------------------------------------------
# arguments


def parse_snrs(values: Iterable[Any] | str | None) -> list[tuple[str, float]]:
    """Canonical (label, dB) pairs, sorted from +inf down to -inf. Accepts numbers or strings
    ("10", "+10", "-5dB", "inf", "+inf", "-inf"), comma-separated strings too. Rejects
    unparseable values, NaN and duplicates (after canonicalization) with a message naming --snr."""
    if values is None:
        values = SNR_LABELS
    if isinstance(values, (str, int, float)):
        values = [values]
    items: list[Any] = []
    for v in values:
        if isinstance(v, str):
            items.extend(p for p in (s.strip() for s in v.split(",")) if p != "")
        else:
            items.append(v)
    if not items:
        raise SSEUBuildError("--snr: no SNR given")
    out: dict[str, float] = {}
    for v in items:
        raw = v
        if isinstance(v, str):
            s = v.strip().lower().replace(" ", "")
            s = s.removesuffix("db")
            if s in ("inf", "+inf", "infinity", "+infinity"):
                val = math.inf
            elif s in ("-inf", "-infinity"):
                val = -math.inf
            else:
                try:
                    val = float(s)
                except ValueError:
                    raise SSEUBuildError(f"--snr: cannot parse {raw!r} (use a number of dB, +inf or -inf)") from None
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            val = float(v)
        else:
            raise SSEUBuildError(f"--snr: cannot parse {raw!r}")
        if math.isnan(val):
            raise SSEUBuildError(f"--snr: {raw!r} is not a number")
        label = snr_label(val)
        if label in out:
            raise SSEUBuildError(f"--snr: duplicate value {raw!r} (= {label} dB given twice)")
        out[label] = val
    return sorted(out.items(), key=lambda kv: -kv[1])


def snr_label(val: float) -> str:
    if val == math.inf:
        return "+inf"
    if val == -math.inf:
        return "-inf"
    if float(val).is_integer():
        return str(int(val))
    return repr(float(val))


def load_event_classes(spec: str | os.PathLike | None = "A") -> tuple[list[str], dict[str, str], str]:
    """(classes, source label -> class, description). spec: "A" (default), "B", or a TSV path
    with columns `class` and `source_labels` (`|`-separated; empty = the class name itself)."""
    if spec is None:
        spec = "A"
    key = str(spec)
    if key.upper() in ("A", "B"):
        cand = key.upper()
        rows = list(csv.DictReader(io.StringIO(_CLASS_TABLE), delimiter="\t"))
        classes, mapping = [], {}
        for r in rows:
            labels = r[f"source_labels_{cand}"]
            if not labels:
                continue
            classes.append(r["class"])
            for lab in labels.split("|"):
                mapping[lab] = r["class"]
        return classes, mapping, CLASS_SOURCE[cand]
    path = Path(spec)
    if not path.is_file():
        raise SSEUBuildError(f"--event-classes: {spec!r} is neither A, B nor a TSV file")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or "class" not in rows[0]:
        raise SSEUBuildError(f"event class table {path}: needs a header with a 'class' column")
    classes, mapping = [], {}
    for r in rows:
        c = (r.get("class") or "").strip()
        if not c:
            continue
        if c in classes:
            raise SSEUBuildError(f"event class table {path}: duplicate class {c!r}")
        classes.append(c)
        labels = (r.get("source_labels") or "").strip() or c
        for lab in labels.split("|"):
            mapping[lab.strip()] = c
    return classes, mapping, f"table {path}"


# ---------------------------------------------------------------------------------------------
# source readers


@dataclass
class SpeechItem:
    path: Path
    rel: str
    speaker: str
    utt: str
    transcript_path: Path


@dataclass
class BackgroundItem:
    path: Path
    rel: str
    scene: str
    events: list[dict[str, Any]]  # source labels, seconds relative to start_s
    start_s: float = 0.0
    duration_s: float | None = None  # None: the whole file
    key: str = ""


def read_vctk(root: str | os.PathLike) -> tuple[list[SpeechItem], list[str]]:
    """(utterances, skipped speakers without a txt folder). 0.92 layout (mic1 FLAC) first, else 0.80."""
    root = Path(root)
    if not root.is_dir():
        raise SSEUBuildError(f"--vctk: {root} is not a directory")
    audio_dir, pattern = None, None
    for d, pat in (("wav48_silence_trimmed", re.compile(r"^(?P<spk>[^_]+)_(?P<utt>\d+)_mic1\.flac$")),
                   ("wav48", re.compile(r"^(?P<spk>[^_]+)_(?P<utt>\d+)\.wav$"))):
        if (root / d).is_dir():
            audio_dir, pattern = root / d, pat
            break
    if audio_dir is None:
        raise SSEUBuildError(f"--vctk: {root} has neither wav48_silence_trimmed/ (VCTK 0.92) nor wav48/ (0.80)")
    txt_dir = root / "txt"
    if not txt_dir.is_dir():
        raise SSEUBuildError(f"--vctk: {root} has no txt/ transcript folder")
    items, skipped = [], []
    for spk in sorted(os.listdir(audio_dir)):
        sdir = audio_dir / spk
        if not sdir.is_dir():
            continue
        if not (txt_dir / spk).is_dir():
            skipped.append(spk)
            continue
        for name in sorted(os.listdir(sdir)):
            m = pattern.match(name)
            if not m or m["spk"] != spk:
                continue
            items.append(SpeechItem(path=sdir / name, rel=f"{audio_dir.name}/{spk}/{name}", speaker=spk,
                                    utt=m["utt"], transcript_path=txt_dir / spk / f"{spk}_{m['utt']}.txt"))
    if not items:
        raise SSEUBuildError(f"--vctk: no utterances with a transcript folder found under {audio_dir}")
    return items, skipped


def read_transcript(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            line = f.readline()
    except FileNotFoundError:
        raise SSEUBuildError(f"missing transcript file {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SSEUBuildError(f"cannot read transcript file {path}: {e}") from None
    text = line.strip()
    if not text:
        raise SSEUBuildError(f"empty transcript file {path}")
    return text


def _find_first(root: Path, candidates: Sequence[str]) -> Path | None:
    for c in candidates:
        if (root / c).exists():
            return root / c
    return None


def _event_tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a DCASE event table (tab-separated, header filename/onset/offset/event_label:
    DESED's public.tsv, MAESTRO's gt_dev.csv); a file with another header is refused."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:4]] != ["filename", "onset", "offset", "event_label"]:
            raise SSEUBuildError(f"{path}: expected header filename/onset/offset/event_label, got {header}")
        yield from enumerate(reader, start=2)


def read_desed(root: str | os.PathLike) -> list[BackgroundItem]:
    """DESED public evaluation set: `metadata/eval/public.tsv` + `audio/eval/public/*.wav`
    (also accepts the parent of `dataset/`). Clips with any Speech event are excluded."""
    root = Path(root)
    if not root.is_dir():
        raise SSEUBuildError(f"--desed: {root} is not a directory")
    if not (root / "metadata").is_dir() and (root / "dataset" / "metadata").is_dir():
        root = root / "dataset"
    tsv = _find_first(root, ["metadata/eval/public.tsv", "public.tsv"])
    if tsv is None:
        raise SSEUBuildError(f"--desed: no metadata/eval/public.tsv under {root}")
    audio_dir = _find_first(root, ["audio/eval/public", "audio/public", "public"])
    if audio_dir is None:
        raise SSEUBuildError(f"--desed: no audio/eval/public/ folder under {root}")
    clips: dict[str, list[dict[str, Any]]] = {}
    for i, row in _event_tsv_rows(tsv):
        if not row or not row[0].strip():
            continue
        row = (row + ["", "", ""])[:4]
        fn, on, off, lab = (c.strip() for c in row)
        evs = clips.setdefault(fn, [])
        if lab:
            try:
                evs.append({"label": lab, "onset": float(on), "offset": float(off)})
            except ValueError:
                raise SSEUBuildError(f"{tsv}: line {i}: bad onset/offset {on!r}/{off!r}") from None
    items = []
    for fn in sorted(clips):
        evs = clips[fn]
        if any(e["label"] == "Speech" for e in evs):
            continue
        rel_dir = audio_dir.relative_to(root).as_posix()
        items.append(BackgroundItem(path=audio_dir / fn, rel=f"{rel_dir}/{fn}", scene="home", events=evs,
                                    key=f"desed:{fn}"))
    return items


def _merge_segments(rows: Iterable[tuple[str, float, float]]) -> list[dict[str, Any]]:
    by: dict[str, list[list[float]]] = {}
    for lab, on, off in sorted(rows, key=lambda r: (r[0], r[1])):
        spans = by.setdefault(lab, [])
        if spans and on <= spans[-1][1] + 1e-6:
            spans[-1][1] = max(spans[-1][1], off)
        else:
            spans.append([on, off])
    return [{"label": lab, "onset": s, "offset": e} for lab, spans in by.items() for s, e in spans]


def _audio_frames(path: Path) -> tuple[int, int]:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:
        if not path.exists():
            raise SSEUBuildError(f"background audio file not found: {path}") from None
        raise SSEUBuildError(f"cannot read audio {path}: {e}") from None
    return int(info.frames), int(info.samplerate)


def read_maestro(root: str | os.PathLike, window_s: float = MAESTRO_WINDOW_S) -> list[BackgroundItem]:
    """MAESTRO-Real development set: `development_audio/<scene>/<scene>_NN.wav`, labels from
    `development_annotation/soft_labels_<scene>/<stem>.txt` (> 0.5) or `gt_dev.csv`; each
    recording is cut into non-overlapping full windows of `window_s` seconds."""
    root = Path(root)
    if not root.is_dir():
        raise SSEUBuildError(f"--maestro: {root} is not a directory")
    audio_root = _find_first(root, ["development_audio", "audio"])
    if audio_root is None:
        raise SSEUBuildError(f"--maestro: no development_audio/ folder under {root}")
    gt = _find_first(root, ["gt_dev.csv", "metadata/gt_dev.csv"])
    gt_rows: dict[str, list[tuple[str, float, float]]] | None = None
    if gt is not None:
        gt_rows = {}
        for i, row in _event_tsv_rows(gt):
            if len(row) < 4:
                continue
            try:
                gt_rows.setdefault(Path(row[0].strip()).stem, []).append((row[3].strip(), float(row[1]), float(row[2])))
            except ValueError:
                raise SSEUBuildError(f"{gt}: line {i}: bad onset/offset") from None
    items = []
    for scene_dir in sorted(p for p in audio_root.iterdir() if p.is_dir()):
        if scene_dir.name not in MAESTRO_SCENES:
            continue
        for wav in sorted(scene_dir.glob("*.wav")):
            stem = wav.stem
            soft = root / "development_annotation" / f"soft_labels_{scene_dir.name}" / f"{stem}.txt"
            if soft.is_file():
                rows = []
                with open(soft, encoding="utf-8") as f:
                    for i, line in enumerate(f, start=1):
                        parts = line.rstrip("\r\n").split("\t")
                        if len(parts) < 4 or not parts[0].strip():
                            continue
                        try:
                            on, off, val = float(parts[0]), float(parts[1]), float(parts[3])
                        except ValueError:
                            raise SSEUBuildError(f"{soft}: line {i}: expected onset<TAB>offset<TAB>label<TAB>value") from None
                        if min(val, 1.0) > MAESTRO_SOFT_THRESHOLD:
                            rows.append((parts[2].strip(), on, off))
            elif gt_rows is not None:
                rows = gt_rows.get(stem, [])
            else:
                raise SSEUBuildError(f"--maestro: no annotation for {wav}: looked for {soft} and gt_dev.csv")
            events = _merge_segments(rows)
            frames, sr = _audio_frames(wav)
            dur = frames / sr
            n_win = int(dur // window_s + 1e-9)
            rel = wav.relative_to(root).as_posix()
            for w in range(n_win):
                s, e = w * window_s, (w + 1) * window_s
                evs = [{"label": ev["label"], "onset": max(ev["onset"], s) - s, "offset": min(ev["offset"], e) - s}
                       for ev in events if ev["offset"] > s and ev["onset"] < e]
                items.append(BackgroundItem(path=wav, rel=rel, scene=MAESTRO_SCENES[scene_dir.name], events=evs,
                                            start_s=s, duration_s=window_s, key=f"maestro:{stem}:{w}"))
    if not items:
        raise SSEUBuildError(f"--maestro: no recordings found under {audio_root}/<scene>/")
    return items


# ---------------------------------------------------------------------------------------------
# audio loading


def _check(x: np.ndarray, name: str) -> np.ndarray:
    if x.size == 0:
        raise SSEUBuildError(f"audio {name} is empty (0 samples)")
    if not np.isfinite(x).all():
        raise SSEUBuildError(f"audio {name} contains NaN or infinite samples")
    if not np.any(x):
        raise SSEUBuildError(f"audio {name} is silent (all samples are zero)")
    return x


def load_audio(path: Path, start_s: float = 0.0, duration_s: float | None = None,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float64 at `sample_rate` (channels averaged, soxr HQ resampling); errors name the file."""
    import soundfile as sf

    from evalkit.audio import resample

    try:
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            start = int(round(start_s * sr))
            frames = -1 if duration_s is None else int(round(duration_s * sr))
            if start:
                f.seek(start)
            x = f.read(frames=frames, dtype="float64", always_2d=True)
    except Exception as e:
        if not Path(path).exists():
            raise SSEUBuildError(f"audio file not found: {path}") from None
        raise SSEUBuildError(f"cannot decode audio {path}: {e}") from None
    x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    _check(x, str(path))
    if sr != sample_rate:
        x = np.asarray(resample(x, sr, sample_rate), dtype=np.float64)
    return x


# ---------------------------------------------------------------------------------------------
# the engine shared by the real and the synthetic builds


def _sig(g: float) -> float:
    return float(f"{g:.6g}")


def _plan_hash(plan: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    """Rows of an existing manifest; a torn last line (interrupted append) is cut off."""
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, good = [], 0
    pos = 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("torn line")
            rows.append(json.loads(line))
        except ValueError:
            break
        pos += len(line)
        good = pos
    if good != len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def _write_clip(path: Path, x: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    fmt = "FLAC" if path.suffix == ".flac" else "WAV"
    sf.write(str(tmp), x, sample_rate, format=fmt, subtype="PCM_16")
    os.replace(tmp, path)


@dataclass
class _Pair:
    pair_id: str
    scene: str
    speaker: str
    speech_rel: str
    background_rel: str
    background_segment: dict[str, Any]
    offset_frac: float
    transcript: str
    extra: dict[str, Any] = field(default_factory=dict)


def _run(out: Path, meta: dict[str, Any], pairs: list[_Pair], snrs: list[tuple[str, float]],
         load_speech: Callable[[_Pair], np.ndarray], load_background: Callable[[_Pair], tuple[np.ndarray, list]],
         label_map: dict[str, str], synthetic: bool, on_clip: Callable[[dict], None] | None,
         progress: bool, stems: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    sr = SAMPLE_RATE
    out.mkdir(parents=True, exist_ok=True)
    clips = out / "clips"
    clips.mkdir(exist_ok=True)
    plan = {"meta": meta, "snrs": [lab for lab, _ in snrs], "pairs": [asdict(p) for p in pairs]}
    phash = _plan_hash(plan)
    state_path = out / STATE_FILE
    manifest_path = out / "manifest.jsonl"
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
        except ValueError:
            raise SSEUBuildError(f"{state_path} is unreadable; delete {out} or use another --out") from None
        if state.get("plan_hash") != phash:
            old = state.get("args", {})
            diff = {k: (old.get(k), meta["args"].get(k)) for k in set(old) | set(meta["args"])
                    if old.get(k) != meta["args"].get(k)}
            raise SSEUBuildError(
                f"{out} holds a build with a different plan (changed: {diff or 'source files or builder version'}); "
                "resume with the same arguments, or use a new --out")
    else:
        if manifest_path.exists() and manifest_path.stat().st_size > 0:
            raise SSEUBuildError(f"{manifest_path} exists but {state_path} does not: not a resumable build; "
                                 "use an empty --out")
        _write_json_atomic(state_path, {"plan_hash": phash, "builder_version": BUILDER_VERSION, "args": meta["args"]})
    for p in clips.glob("*.partial.*"):
        p.unlink()
    done = {r["id"] for r in _read_manifest(manifest_path)}
    n_total = len(pairs) * len(snrs)
    n_built = 0
    with open(manifest_path, "a", encoding="utf-8") as mf:
        for pair in pairs:
            todo = [(lab, val) for lab, val in snrs if f"{pair.pair_id}_snr{lab}" not in done]
            if not todo:
                continue
            try:
                speech = load_speech(pair)
                bg_src, src_events = load_background(pair)
                n = speech.shape[0]
                bg, fit = mixing.fit_background(bg_src, n, sr, pair.offset_frac)
                events = mixing.fit_events(
                    [dict(e, label=label_map[e["label"]]) for e in src_events if e["label"] in label_map],
                    fit, n, bg_src.shape[0], sr)
                for lab, val in todo:
                    cid = f"{pair.pair_id}_snr{lab}"
                    mix, info = mixing.mix_at_snr(speech, bg, val, sr)
                    rel = f"clips/{cid}.flac"
                    _write_clip(out / rel, mix, sr)
                    if stems:
                        import soundfile as sf

                        sdir = clips / "stems"
                        sdir.mkdir(exist_ok=True)
                        for nm, comp in (("speech", info["speech_component"]), ("background", info["background_component"])):
                            tmp = sdir / f"{cid}.{nm}.partial.wav"
                            sf.write(str(tmp), comp, sr, subtype="FLOAT")
                            os.replace(tmp, sdir / f"{cid}.{nm}.wav")
                    g = info["gains"]
                    m = info["measured_snr_db"]
                    row = {
                        "id": cid,
                        "audio": rel,
                        "snr": lab,
                        "snr_db": None if math.isinf(val) else val,
                        "transcript": "" if val == -math.inf else pair.transcript,
                        "scene": pair.scene,
                        "events": [] if val == math.inf else events,
                        "speech_source": pair.speech_rel,
                        "background_source": pair.background_rel,
                        "background_segment": dict(pair.background_segment, mode=fit["mode"],
                                                   offset_s=round(fit["offset"] / sr, 4)),
                        "speaker": pair.speaker,
                        "gains": {"speech": _sig(g["speech"]), "background": _sig(g["background"]),
                                  "common": _sig(g["common"])},
                        "measured_snr_db": None if m is None else round(m, 4),
                        "sample_rate": sr,
                        "duration_s": round(n / sr, 4),
                        "synthetic": synthetic,
                    }
                    mf.write(json.dumps(row) + "\n")
                    mf.flush()
                    done.add(cid)
                    n_built += 1
                    if on_clip is not None:
                        on_clip(row)
            except SSEUBuildError as e:
                raise SSEUBuildError(f"pair {pair.pair_id} (speech {pair.speech_rel}, background "
                                     f"{pair.background_rel}): {e}") from e
            except mixing.MixingError as e:
                raise SSEUBuildError(f"pair {pair.pair_id} (speech {pair.speech_rel}, background "
                                     f"{pair.background_rel}): {e}") from e
            if progress:
                print(f"\r[sseu] {len(done)}/{n_total} clips", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    rows = _read_manifest(manifest_path)
    ids = [r["id"] for r in rows]
    if len(ids) != len(set(ids)):
        raise SSEUBuildError(f"{manifest_path} has duplicate ids")
    info = {
        "name": meta["name"],
        "synthetic": synthetic,
        "seed": meta["args"]["seed"],
        "snrs": [lab for lab, _ in snrs],
        "scenes": SCENES,
        "events": meta["events"],
        "event_class_source": meta["event_class_source"],
        "sample_rate": sr,
        "n_clips": len(rows),
        "n_pairs": len(pairs),
        "builder_version": BUILDER_VERSION,
        "power_definition": POWER_DEFINITION,
        "plan_hash": phash,
    }
    _write_json_atomic(out / "sseu.json", info)
    return {"out": str(out), "n_clips": len(rows), "n_built": n_built, "n_skipped": n_total - n_built,
            "n_pairs": len(pairs), "plan_hash": phash, "seconds": round(time.perf_counter() - t0, 3)}


# ---------------------------------------------------------------------------------------------
# the real build


def _interleave(groups: dict[str, list[Any]]) -> list[Any]:
    order = [s for s in SCENES if s in groups] + sorted(s for s in groups if s not in SCENES)
    out, i = [], 0
    while any(i < len(groups[s]) for s in order):
        out.extend(groups[s][i] for s in order if i < len(groups[s]))
        i += 1
    return out


def plan_real(vctk: str | os.PathLike, desed: str | os.PathLike | None, maestro: str | os.PathLike | None,
              seed: int = 0, limit: int | None = None) -> tuple[list[_Pair], dict[str, Any], dict[Path, SpeechItem]]:
    if desed is None and maestro is None:
        raise SSEUBuildError("give --desed and/or --maestro (no background source)")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise SSEUBuildError(f"--limit: must be a positive integer, got {limit!r}")
    speech, skipped = read_vctk(vctk)
    backgrounds: list[BackgroundItem] = []
    if desed is not None:
        backgrounds += read_desed(desed)
    if maestro is not None:
        backgrounds += read_maestro(maestro)
    if not backgrounds:
        raise SSEUBuildError("no usable background clips found")
    rng = np.random.default_rng(seed)
    groups: dict[str, list[BackgroundItem]] = {}
    for b in backgrounds:
        groups.setdefault(b.scene, []).append(b)
    for s in sorted(groups):
        groups[s] = [groups[s][i] for i in rng.permutation(len(groups[s]))]
    ordered: list[BackgroundItem] = _interleave(groups)
    if limit is not None:
        ordered = ordered[:limit]
    by_spk: dict[str, list[SpeechItem]] = {}
    for it in speech:
        by_spk.setdefault(it.speaker, []).append(it)
    spk_order = [sorted(by_spk)[i] for i in rng.permutation(len(by_spk))]
    pools = {s: [by_spk[s][i] for i in rng.permutation(len(by_spk[s]))] for s in spk_order}
    pairs, items = [], {}
    used: dict[str, int] = {}
    for k, bg in enumerate(ordered):
        spk = spk_order[k % len(spk_order)]
        pool = pools[spk]
        j = used.get(spk, 0)
        used[spk] = j + 1
        sp = pool[j % len(pool)]
        transcript = read_transcript(sp.transcript_path)
        seg = {"start_s": bg.start_s, "duration_s": bg.duration_s}
        pair = _Pair(pair_id=f"sseu-{k:05d}", scene=bg.scene, speaker=sp.speaker, speech_rel=sp.rel,
                     background_rel=bg.rel, background_segment=seg, offset_frac=float(rng.random()),
                     transcript=transcript, extra={"background_key": bg.key})
        pairs.append(pair)
        items[sp.rel] = sp
        items[bg.key] = bg
    missing = sorted({str(items[p.extra["background_key"]].path) for p in pairs
                      if not items[p.extra["background_key"]].path.is_file()}
                     | {str(items[p.speech_rel].path) for p in pairs if not items[p.speech_rel].path.is_file()})
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise SSEUBuildError(f"audio file not found: {', '.join(missing[:5])}{more}")
    info = {"n_speech_candidates": len(speech), "skipped_speakers": skipped,
            "n_background_candidates": len(backgrounds)}
    return pairs, info, items


def build(vctk: str | os.PathLike, desed: str | os.PathLike | None, maestro: str | os.PathLike | None,
          out: str | os.PathLike, snrs: Iterable[Any] | str | None = None, seed: int = 0,
          limit: int | None = None, progress: bool = True, *, event_classes: str | os.PathLike = "A",
          stems: bool = False, on_clip: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Build SSEU-Bench-style mixtures from the real corpora into `out` (resumable). Returns a summary."""
    snr_list = parse_snrs(snrs)
    classes, label_map, class_source = load_event_classes(event_classes)
    pairs, pinfo, items = plan_real(vctk, desed, maestro, seed=seed, limit=limit)
    meta = {
        "name": "sseu-bench",
        "builder_version": BUILDER_VERSION,
        "sample_rate": SAMPLE_RATE,
        "events": classes,
        "label_map": label_map,
        "event_class_source": class_source,
        "args": {"vctk": str(Path(vctk).resolve()),
                 "desed": None if desed is None else str(Path(desed).resolve()),
                 "maestro": None if maestro is None else str(Path(maestro).resolve()),
                 "seed": seed, "limit": limit, "snrs": [lab for lab, _ in snr_list],
                 "event_classes": str(event_classes)},
    }
    vctk_root = Path(vctk)

    def load_speech(p: _Pair) -> np.ndarray:
        return load_audio(vctk_root / p.speech_rel)

    def load_background(p: _Pair) -> tuple[np.ndarray, list]:
        bg: BackgroundItem = items[p.extra["background_key"]]
        x = load_audio(bg.path, bg.start_s, bg.duration_s)
        n = x.shape[0]
        evs = [dict(e, onset=min(max(e["onset"], 0.0), n / SAMPLE_RATE), offset=min(e["offset"], n / SAMPLE_RATE))
               for e in bg.events]
        return x, evs

    summary = _run(Path(out), meta, pairs, snr_list, load_speech, load_background, label_map,
                   synthetic=False, on_clip=on_clip, progress=progress, stems=stems)
    summary.update(pinfo)
    return summary


# ---------------------------------------------------------------------------------------------
# the synthetic variant


def _synth_speech() -> list[tuple[str, str]]:
    tsv = SYNTH_DIR / "transcripts.tsv"
    with open(tsv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [(r["id"], r["transcript"]) for r in rows]


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float, tilt: float = 0.0) -> np.ndarray:
    import scipy.fft

    nf = scipy.fft.next_fast_len(n, real=True)
    spec = scipy.fft.rfft(rng.standard_normal(nf))
    f = np.fft.rfftfreq(nf, 1.0 / sr)
    shape = ((f >= lo) & (f <= hi)).astype(np.float64)
    if tilt:
        shape *= np.where(f > 0, (np.maximum(f, 1.0) / max(lo, 1.0)) ** (-tilt / 2.0), 0.0)
    y = scipy.fft.irfft(spec * shape, nf)[:n]
    return y / (np.sqrt(np.mean(y * y)) + 1e-12)


def _gate(n: int, sr: int, on: float, off: float, ramp: float = 0.02) -> np.ndarray:
    t = np.arange(n) / sr
    up = np.clip((t - on) / ramp, 0.0, 1.0)
    down = np.clip((off - t) / ramp, 0.0, 1.0)
    return np.minimum(up, down)


def _impulses(rng: np.random.Generator, n: int, sr: int, times: np.ndarray, freq_lo: float, freq_hi: float,
              decay: float) -> np.ndarray:
    """Sum of decaying sinusoids ("clinks", "ticks", "steps") starting at `times` (vectorized over events)."""
    out = np.zeros(n)
    L = int(decay * 6 * sr)
    tt = np.arange(L) / sr
    freqs = rng.uniform(freq_lo, freq_hi, size=len(times))
    atoms = np.sin(2 * np.pi * freqs[:, None] * tt[None, :]) * np.exp(-tt / decay)[None, :]
    for k, t0 in enumerate(times):  # one add per event, not per sample
        i = int(t0 * sr)
        if i >= n:
            continue
        m = min(L, n - i)
        out[i:i + m] += atoms[k, :m]
    return out


def _event_span(rng: np.random.Generator, dur: float, lo: float, hi: float) -> tuple[float, float]:
    length = min(dur, rng.uniform(lo, hi))
    on = rng.uniform(0.0, max(0.0, dur - length))
    return round(on, 3), round(on + length, 3)


def synth_background(scene: str, duration_s: float, seed: int, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, list[dict]]:
    """A procedurally generated background for `scene` with its events (source labels, seconds)."""
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * sr))
    t = np.arange(n) / sr
    dur = n / sr
    x = np.zeros(n)
    ev: list[dict[str, Any]] = []

    def add(label: str, sig: np.ndarray, on: float, off: float, level: float) -> None:
        nonlocal x
        x = x + level * sig * _gate(n, sr, on, off)
        ev.append({"label": label, "onset": on, "offset": off})

    if scene == "home":
        x += 0.05 * (np.sin(2 * np.pi * 50 * t) + 0.5 * np.sin(2 * np.pi * 100 * t) + 0.25 * np.sin(2 * np.pi * 150 * t))
        x += 0.3 * _impulses(rng, n, sr, np.arange(0.0, dur, 1.0) + rng.uniform(0, 1), 2000, 2500, 0.002)  # clock
        on, off = _event_span(rng, dur, 0.6, 1.5)
        beep = np.sin(2 * np.pi * 2500 * t) * (np.sin(2 * np.pi * 4 * t) > 0)
        add("Alarm_bell_ringing", beep, on, off, 0.25)
        on, off = _event_span(rng, dur, 0.8, 2.0)
        add("Running_water", _band_noise(rng, n, sr, 400, 5000) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t)), on, off, 0.2)
        on, off = _event_span(rng, dur, 0.3, 1.0)
        clinks = _impulses(rng, n, sr, on + rng.uniform(0, off - on, 4), 3000, 6000, 0.03)
        x += 0.6 * clinks
        ev.append({"label": "Dishes", "onset": on, "offset": round(min(dur, off + 0.1), 3)})
    elif scene == "restaurant":
        syll = 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * 2.2 * t + rng.uniform(0, 6)))
        x += 0.3 * _band_noise(rng, n, sr, 200, 3000, tilt=1.0) * syll  # babble-like (people talking: unlabelled)
        on, off = _event_span(rng, dur, 0.4, 1.5)
        x += 0.7 * _impulses(rng, n, sr, on + rng.uniform(0, off - on, 5), 2500, 7000, 0.025)
        ev.append({"label": "cutlery and dishes", "onset": on, "offset": round(min(dur, off + 0.1), 3)})
        on, off = _event_span(rng, dur, 1.0, 2.0)
        x += 0.5 * _impulses(rng, n, sr, np.arange(on, off, 0.5), 80, 200, 0.02)
        ev.append({"label": "footsteps", "onset": on, "offset": round(min(dur, off + 0.1), 3)})
    elif scene == "city center":
        add("car", _band_noise(rng, n, sr, 30, 400, tilt=1.0), 0.0, round(dur, 3), 0.3)  # traffic rumble
        on, off = _event_span(rng, dur, 0.8, 2.0)
        add("large_vehicle", _band_noise(rng, n, sr, 20, 150) * (0.6 + 0.4 * np.sin(np.pi * (t - on) / max(off - on, 1e-3))), on, off, 0.4)
        h_on, h_off = _event_span(rng, dur, 0.3, 0.6)  # horn: no class, unlabelled
        x += 0.2 * (np.sign(np.sin(2 * np.pi * 420 * t)) + np.sign(np.sin(2 * np.pi * 500 * t))) * _gate(n, sr, h_on, h_off)
        on, off = _event_span(rng, dur, 0.3, 0.8)
        add("brakes_squeaking", np.sin(2 * np.pi * (3200 * t + 30 * np.sin(2 * np.pi * 7 * t))), on, off, 0.15)
    elif scene == "grocery store":
        x += 0.1 * _band_noise(rng, n, sr, 100, 2000, tilt=1.0)  # air conditioning
        for b0 in rng.uniform(0, max(0.0, dur - 0.15), 3):  # cash-register beeps (soft-only class: unlabelled)
            x += 0.2 * np.sin(2 * np.pi * 1800 * t) * _gate(n, sr, b0, b0 + 0.12, 0.005)
        on, off = _event_span(rng, dur, 1.0, 2.5)
        x += 0.6 * _impulses(rng, n, sr, np.arange(on, off, 0.55), 60, 180, 0.025)
        ev.append({"label": "footsteps", "onset": on, "offset": round(min(dur, off + 0.1), 3)})
    elif scene == "metro station":
        x += 0.15 * _band_noise(rng, n, sr, 20, 200)
        on, off = _event_span(rng, dur, 1.0, 2.5)
        ramp = np.clip((t - on) / max(off - on, 1e-3), 0, 1)
        label = "metro approaching" if rng.random() < 0.5 else "metro leaving"
        env = ramp if label == "metro approaching" else 1 - ramp
        add(label, _band_noise(rng, n, sr, 30, 800, tilt=1.0) * (0.2 + env), on, off, 0.4)
        on, off = _event_span(rng, dur, 0.3, 0.8)
        add("brakes_squeaking", np.sin(2 * np.pi * (3800 * t + 40 * np.sin(2 * np.pi * 9 * t))), on, off, 0.15)
    elif scene == "residential area":
        wind = _band_noise(rng, n, sr, 20, 600, tilt=1.0) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6)))
        add("wind_blowing", wind, 0.0, round(dur, 3), 0.15)
        on, off = _event_span(rng, dur, 0.8, 2.0)
        starts = on + rng.uniform(0, max(off - on - 0.1, 0.01), 6)
        L = int(0.08 * sr)
        tt = np.arange(L) / sr
        f0 = rng.uniform(3000, 5000, size=len(starts))
        chirps = np.sin(2 * np.pi * (f0[:, None] * tt + 20000 * tt ** 2)) * np.hanning(L)[None, :]
        birds = np.zeros(n)
        for k, s0 in enumerate(starts):
            i = int(s0 * sr)
            m = min(L, n - i)
            if m > 0:
                birds[i:i + m] += chirps[k, :m]
        x += 0.3 * birds
        ev.append({"label": "birds_singing", "onset": on, "offset": off})
        on, off = _event_span(rng, dur, 0.3, 0.9)
        bark = (np.sign(np.sin(2 * np.pi * 450 * t)) * 0.5 + _band_noise(rng, n, sr, 300, 2000)) * (np.sin(2 * np.pi * 3 * (t - on)) > 0)
        add("Dog", bark, on, off, 0.2)
    else:
        raise SSEUBuildError(f"unknown synthetic scene {scene!r}; expected one of {SCENES}")
    ev = [dict(e, onset=round(float(e["onset"]), 3), offset=round(float(min(e["offset"], dur)), 3)) for e in ev]
    return x, sorted(ev, key=lambda e: (e["onset"], e["label"]))


def build_synthetic(out: str | os.PathLike, seed: int = 0, snrs: Iterable[Any] | str | None = None,
                    n_pairs: int = 12, progress: bool = False, *, event_classes: str | os.PathLike = "A",
                    stems: bool = False, on_clip: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Build "sseu-synth" (SYNTHETIC: espeak-ng speech + procedural backgrounds) into `out`.
    44.1 kHz like the real set; backgrounds are 1.5-5 s so that both cutting and looping occur."""
    if not isinstance(n_pairs, int) or n_pairs < 1:
        raise SSEUBuildError(f"n_pairs: must be a positive integer, got {n_pairs!r}")
    snr_list = parse_snrs(snrs)
    classes, label_map, class_source = load_event_classes(event_classes)
    speech = _synth_speech()
    if not speech:
        raise SSEUBuildError(f"no synthetic speech listed in {SYNTH_DIR / 'transcripts.tsv'}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(speech))
    pairs = []
    for k in range(n_pairs):
        sid, text = speech[int(order[k % len(speech)])]
        scene = SCENES[k % len(SCENES)]
        bg_seed = int(rng.integers(0, 2**31 - 1))
        bg_dur = round(float(rng.uniform(1.5, 5.0)), 3)
        pairs.append(_Pair(pair_id=f"synth-{k:05d}", scene=scene, speaker=f"espeak-{sid}",
                           speech_rel=f"sseu_synth/speech/{sid}.flac",
                           background_rel=f"procedural:{scene}:seed={bg_seed}",
                           background_segment={"start_s": 0.0, "duration_s": bg_dur},
                           offset_frac=float(rng.random()), transcript=text,
                           extra={"bg_seed": bg_seed, "sid": sid}))
    meta = {
        "name": "sseu-synth",
        "builder_version": BUILDER_VERSION,
        "sample_rate": SAMPLE_RATE,
        "events": classes,
        "label_map": label_map,
        "event_class_source": class_source,
        "args": {"seed": seed, "n_pairs": n_pairs, "snrs": [lab for lab, _ in snr_list],
                 "event_classes": str(event_classes), "synthetic": True},
    }

    def load_speech(p: _Pair) -> np.ndarray:
        return load_audio(SYNTH_DIR / "speech" / f"{p.extra['sid']}.flac")

    def load_background(p: _Pair) -> tuple[np.ndarray, list]:
        return synth_background(p.scene, p.background_segment["duration_s"], p.extra["bg_seed"])

    summary = _run(Path(out), meta, pairs, snr_list, load_speech, load_background, label_map,
                   synthetic=True, on_clip=on_clip, progress=progress, stems=stems)
    return summary


# ---------------------------------------------------------------------------------------------
# `evalkit data build sseu` / `sseu-synth` (the registry's "builder" table)

class SSEUBuildOptions(BuilderOptions):
    vctk: Path = Field(description="VCTK root (wav48_silence_trimmed/ + txt/, or wav48/ + txt/).")
    out: Path = Field(description="Output folder (clips/, manifest.jsonl, sseu.json).")
    desed: Path | None = Field(None, description="DESED public evaluation set root (scene: home).")
    maestro: Path | None = Field(None, description="MAESTRO-Real development root (five scenes).")
    snr: list[str] | None = Field(None, description="SNR in dB, +inf or -inf; repeat (default: all seven).")
    seed: int = Field(0, description="Pairing and offsets seed.")
    limit: int | None = Field(None, description="Only the first N speech/background pairs.")
    event_classes: str = Field("A", description="Event class list: A (default), B, or a TSV file.")
    stems: bool = Field(False, description="Also write the speech and background parts of each clip.")


class SSEUBuilder(DataBuilder):
    name = "sseu"
    description = "SSEU-Bench mixtures from VCTK, DESED and MAESTRO-Real (resumable, deterministic)."
    Options = SSEUBuildOptions

    def build(self, options: SSEUBuildOptions, progress: bool = True) -> dict[str, Any]:
        return build(options.vctk, options.desed, options.maestro, options.out, snrs=options.snr,
                     seed=options.seed, limit=options.limit, progress=progress,
                     event_classes=options.event_classes, stems=options.stems)


class SSEUSynthOptions(BuilderOptions):
    out: Path = Field(Path("data/sseu-synth"), description="Output folder.")
    seed: int = Field(0, description="Seed for backgrounds and pairing.")
    pairs: int = Field(12, description="Speech/background pairs (each at every SNR).")
    snr: list[str] | None = Field(None, description="SNR in dB, +inf or -inf; repeat (default: all seven).")


class SSEUSynthBuilder(DataBuilder):
    name = "sseu-synth"
    description = "The small SYNTHETIC offline SSEU set (espeak-ng speech + procedural scenes), in seconds."
    Options = SSEUSynthOptions

    def build(self, options: SSEUSynthOptions, progress: bool = True) -> dict[str, Any]:
        return build_synthetic(options.out, seed=options.seed, snrs=options.snr, n_pairs=options.pairs,
                               progress=progress)
