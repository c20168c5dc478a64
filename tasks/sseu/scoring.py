"""SSEU-Bench scoring: ASR (WER), acoustic scene classification (mACC), audio tagging (mAP).

ASR
  Reference and hypothesis go through Whisper's English text normalizer
  (`whisper_normalizer.english.EnglishTextNormalizer`), then jiwer counts word errors
  (substitutions + deletions + insertions). Corpus WER = total errors / total reference
  words, in percent (not a mean of per-clip WERs). Clips whose normalized reference is
  empty are not scored: in particular SNR "-inf" (background only, no speech).

Abstention (what "no prediction" is)
  Before anything is embedded, the scene or event field is extracted from the text
  (`scene_text`, `parse_event_list`): a lead-in that ends in a colon and names nothing
  ("The audio description for this recording is:") is dropped, and so is the "Scene:"
  label. A prediction that then names nothing, i.e. `has_content` is false because every
  word left after removing refusal phrases (`_REFUSAL_RE`: "cannot", "not sure",
  "unknown", ...) is a filler word (`_FILLER`: articles, copulas, pronouns, hedges and
  words about the task itself: audio, recording, description, scene, events, ...), is no
  prediction: it is never embedded, so it cannot match the nearest class. Examples:
  "The audio description for this recording is:", "I cannot tell", "Unknown.", "" ->
  no prediction; "I cannot tell, maybe a park" -> "park" is content, the text is embedded.

ASC (free text -> class)
  The predicted scene text and every scene class name are embedded with a text
  embedder (evalkit.text_embedders); c_i = softmax_i(cos(pred, class_i)); the prediction is
  argmax c. No prediction (empty, or no content as above) predicts no class and counts as
  wrong.
  mACC = mean over scene classes (those present in the references) of per-class accuracy
  (= balanced accuracy / macro recall), in percent.

AT (free text -> class scores)
  The response is split into event strings (`parse_event_list`); F[m, n] =
  sigmoid(cos(event_m, class_n)); p_n = max_m F[m, n]. Event strings without content are
  dropped; a response with no events left scores 0 for every class. mAP = macro average precision (sklearn) over the event classes
  that have at least one positive clip in the evaluated set (AP is undefined without
  positives), in percent.

Where an adapter supplies scores itself (CLAP: `Response.extra["label_scores"]`, a
{class name: score} mapping, recorded in the record's `extra`), those scores are used
directly instead of the embedding route (as the paper does for CLAP models).

SNR conditions: ASR is scored where speech is present (SNR != "-inf"); ASC and AT are
scored where a background is present (SNR != "+inf"): at +inf the clip is clean speech,
the scene is unknowable from the audio and there are no events.

Confidence intervals: 95% percentile bootstrap over clips (clusters), 200 resamples,
vectorized as multinomial weights: WER is the ratio of weighted sums, mACC the weighted
per-class accuracy, mAP a weighted AP (equal to sklearn's at unit weights, ties included).
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from evalkit.tasks.loaders import normalized_transcript, transcript_error_parts

N_BOOT = 200
CONFIDENCE = 0.95

NO_SPEECH_SNR = "-inf"
NO_BACKGROUND_SNR = "+inf"


# ---------------------------------------------------------------- text utilities

@lru_cache(maxsize=1)
def normalize_transcript(text: str | None) -> str:
    """The Whisper English normalizer, whitespace collapsed: the one every transcript task uses."""
    return normalized_transcript(text)


def wer_parts(reference: str | None, hypothesis: str | None) -> tuple[int, int] | None:
    """(word errors, reference words) after normalization; None when the reference is empty."""
    return transcript_error_parts(reference, hypothesis, unit="word")


def humanize(label: str) -> str:
    """Class names as text: 'Alarm_bell_ringing' -> 'alarm bell ringing'."""
    return " ".join(str(label).replace("_", " ").split()).lower()


#: words that name no scene or event (see "Abstention" in the module docstring)
_FILLER_WORDS = """
a an the this that these those it its it's there here is are was were be been being am has have had do does
of for in on at to from with by as into about and or but so than then if
i i'm me my we our you your he she they them their
audio sound sounds sounding recording recorded clip clips description describe described describes
scene scenes acoustic environment setting location place event events tag tags label labels class classes
category categories answer final output response result following below above given provided based
detected detect present contains contain heard hear hearing listen listening noticeable audible identify
identified determine determined tell say said know guess
seems seem seemingly appears appear likely probably possibly maybe perhaps might may could would should
will can like sure certain definitely clearly clear specific particular exactly any some kind sort type
what which where who how why not no none nothing n na null unknown unclear unsure uncertain
"""
_FILLER = frozenset(_FILLER_WORDS.split())
_REFUSAL_RE = re.compile(
    r"\b(?:cannot|can't|can\s+not|unable\s+to|not\s+able\s+to|(?:not\s+)?possible\s+to|impossible\s+to|"
    r"don't\s+know|do\s+not\s+know|not\s+sure|no\s+idea|hard\s+to|difficult\s+to|not\s+enough|"
    r"insufficient|i'm\s+sorry|sorry|as\s+an\s+ai)\b", re.I)
_LEAD_IN_RE = re.compile(r"^(?P<lead>[^:：]*)[:：]\s*(?P<rest>.*)$", re.S)


def has_content(text: str | None) -> bool:
    """Whether a scene/event prediction names anything: a word is left after dropping refusal phrases and
    filler words (module docstring, "Abstention")."""
    t = _REFUSAL_RE.sub(" ", str(text or "").lower().replace("’", "'"))
    return any(w not in _FILLER for w in re.findall(r"[a-z0-9]+(?:'[a-z]+)?", t))


def drop_lead_in(text: str) -> str:
    """'The audio description for this recording is: a park' -> 'a park' (lead-ins naming nothing only)."""
    t = text
    while True:
        m = _LEAD_IN_RE.match(t)
        if not m or has_content(m.group("lead")):
            return t.strip()
        t = m.group("rest")


def scene_text(text: str | None) -> str:
    """The scene named in a prediction ("" when it names none): the first line with content once lead-ins
    and a "Scene:" label are dropped; markdown emphasis and surrounding quotes/periods are removed."""
    for line in str(text or "").splitlines():
        line = re.sub(r"[*`#]+", " ", line)
        line = drop_lead_in(line)
        line = line.strip().strip("\"'“”‘’.").strip()
        if has_content(line):
            return " ".join(line.split())
    return ""


_NONE_WORDS = {"none", "no events", "no event", "nothing", "n/a", "na", "null", "no sound events",
               "no sound events detected", "no events detected", "no audible events", "silence", ""}


def _clean_item(s: str) -> str:
    s = re.sub(r"[*_`]+", " ", s)
    s = re.sub(r"^\s*(?:[-•·*+]|\(?\d+[.)]|\(?[a-zA-Z][.)](?=\s))\s*", "", s)  # bullets / numbering
    s = s.strip().strip("\"'“”‘’[](){}").strip()
    s = re.sub(r"\s*\((?:onset|from|at|\d)[^)]*\)\s*$", "", s)  # "(0.5-2.1 s)" timing suffixes
    s = re.sub(r"\s*[:\-–]\s*\d[\d.\s\-–s,]*$", "", s)
    return " ".join(s.rstrip(".;,").split())


def parse_event_list(text: str | list | None) -> list[str]:
    """Event strings from free text: JSON lists, bullet/numbered lines, or items
    separated by commas, semicolons or newlines. "and" is not a separator (class
    names such as "cutlery and dishes" contain it). "none" -> []."""
    if text is None:
        return []
    if isinstance(text, list):
        items = [str(x.get("label") or x.get("event") or "") if isinstance(x, dict) else str(x) for x in text]
    else:
        t = str(text).strip()
        items = None
        m = re.search(r"\[.*\]", t, re.S)
        if m:
            try:
                val = json.loads(m.group(0))
                if isinstance(val, list):
                    return parse_event_list(val)
            except ValueError:
                pass
        if items is None:
            t = re.sub(r"^\s*(?:events?|sound events?|detected events?)\s*[:：]\s*", "", t, flags=re.I)
            t = re.sub(r"\s*[(\[][^()\[\]]*\d[^()\[\]]*[)\]]", "", t)  # "(0.5-2.0 s)" timings
            items = re.split(r"[,;\n]+", t)
    out: list[str] = []
    for it in items:
        c = _clean_item(drop_lead_in(it))
        if c and c.lower() not in _NONE_WORDS and has_content(c) and c.lower() not in out:
            out.append(c)
    return out


# joint answers --------------------------------------------------------------

_LABELS = {"transcript": "transcript", "transcription": "transcript", "speech": "transcript",
           "asr": "transcript", "scene": "scene", "acoustic scene": "scene", "events": "events",
           "event": "events", "sound events": "events", "audio events": "events", "tags": "events"}
_LABEL_RE = re.compile(
    r"^[ \t>#*\-]*(?:\*\*)?\s*(transcript|transcription|speech|asr|acoustic scene|scene|sound events|"
    r"audio events|events|event|tags)\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?",
    re.I | re.M)
_FINAL_RE = re.compile(r"final\s+answer\s*[:：]?", re.I)


def parse_joint(text: str | None) -> tuple[dict[str, Any] | None, str]:
    """({"transcript", "scene", "events"}, stage) from a joint answer.

    Accepts a JSON object (also inside ``` fences, anywhere in the text; the last one
    with a known key wins) or labelled lines "Transcript: ...", "Scene: ...",
    "Events: ..." (the last occurrence of each label wins, and text after the last
    "Final answer" marker is preferred, for chain-of-thought answers). Stages: "json",
    "labelled", "partial" (some fields missing; missing ones are empty),
    "empty", "unparseable_joint" (nothing recognizable: returns None).
    """
    if text is None or not str(text).strip():
        return None, "empty"
    t = str(text)
    finals = list(_FINAL_RE.finditer(t))
    regions = [t[finals[-1].end():], t] if finals else [t]
    for region in regions:
        obj = _last_json_object(region)
        if obj is not None:
            return obj, "json" if len(obj["_found"]) == 3 else "partial"
        hits = list(_LABEL_RE.finditer(region))
        if hits:
            found: dict[str, str] = {}
            for i, m in enumerate(hits):
                end = hits[i + 1].start() if i + 1 < len(hits) else len(region)
                found[_LABELS[m.group(1).lower()]] = region[m.end():end].strip()
            out = {"transcript": _strip_value(found.get("transcript", "")),
                   "scene": _strip_value(found.get("scene", "")),
                   "events": parse_event_list(found.get("events", "")),
                   "_found": sorted(found)}
            return out, "labelled" if len(found) == 3 else "partial"
    return None, "unparseable_joint"


def _strip_value(v: str) -> str:
    v = re.sub(r"[*`]+", "", v).strip()
    if len(v) >= 2 and v[0] in "\"'“" and v[-1] in "\"'”":
        v = v[1:-1]
    return " ".join(v.split())


def _last_json_object(t: str) -> dict[str, Any] | None:
    dec = json.JSONDecoder()
    best = None
    for m in re.finditer(r"\{", t):
        try:
            val, _ = dec.raw_decode(t, m.start())
        except ValueError:
            continue
        if not isinstance(val, dict):
            continue
        keys = {_LABELS.get(str(k).lower().replace("_", " ")) for k in val} - {None}
        if keys:
            got = {_LABELS[str(k).lower().replace("_", " ")]: v for k, v in val.items()
                   if str(k).lower().replace("_", " ") in _LABELS}
            ev = got.get("events", [])
            best = {"transcript": _strip_value(str(got.get("transcript") or "")),
                    "scene": _strip_value(str(got.get("scene") or "")),
                    "events": parse_event_list(ev if isinstance(ev, list) else str(ev or "")),
                    "_found": sorted(keys)}
    return best


# ---------------------------------------------------------------- embedding scores

def scene_confidences(predictions: Sequence[str], classes: Sequence[str], embedder):
    """[N, C] softmax over classes of cos(scene_text(pred), class). Rows of predictions that name no scene
    (empty, a preamble, a refusal: `scene_text` is "") are 0: no prediction, never the nearest class."""
    import numpy as np

    n, c = len(predictions), len(classes)
    out = np.zeros((n, c), dtype=np.float64)
    texts = [scene_text(p) for p in predictions]
    idx = [i for i, t in enumerate(texts) if t]
    if not idx or not c:
        return out
    cls = embedder.embed([humanize(x) for x in classes])
    pred = embedder.embed([humanize(texts[i]) for i in idx])
    cos = pred.astype(np.float64) @ cls.astype(np.float64).T
    e = np.exp(cos - cos.max(axis=1, keepdims=True))
    out[idx] = e / e.sum(axis=1, keepdims=True)
    return out


def event_scores(event_lists: Sequence[Sequence[str]], classes: Sequence[str], embedder):
    """[N, K] p_n = max_m sigmoid(cos(event_m, class_n)); 0 for clips with no events.
    All event strings are embedded in one batched call."""
    import numpy as np

    n, k = len(event_lists), len(classes)
    out = np.zeros((n, k), dtype=np.float64)
    event_lists = [[e for e in evs if has_content(e)] for evs in event_lists]  # "I cannot tell" is no event
    flat = [humanize(e) for evs in event_lists for e in evs]
    if not flat or not k:
        return out
    owner = np.repeat(np.arange(n), [len(evs) for evs in event_lists])
    cls = embedder.embed([humanize(x) for x in classes]).astype(np.float64)
    ev = embedder.embed(flat).astype(np.float64)
    f = 1.0 / (1.0 + np.exp(-(ev @ cls.T)))  # [M, K]
    np.maximum.at(out, owner, f)
    return out


def label_scores_matrix(score_dicts: Sequence[dict[str, float] | None], classes: Sequence[str]):
    """[N, K] from adapter-provided {label: score} dicts (matched by humanized name),
    and a boolean mask of rows that had such scores."""
    import numpy as np

    keys = {humanize(c): j for j, c in enumerate(classes)}
    out = np.zeros((len(score_dicts), len(classes)), dtype=np.float64)
    has = np.zeros(len(score_dicts), dtype=bool)
    for i, d in enumerate(score_dicts):
        if not d:
            continue
        for lab, s in d.items():
            j = keys.get(humanize(lab))
            if j is not None and s is not None:
                out[i, j] = float(s)
                has[i] = True
    return out, has


# ---------------------------------------------------------------- metrics + bootstrap

def bootstrap_weights(clusters: Sequence[str], n_boot: int = N_BOOT, seed: int = 0):
    """[n_boot, n] per-sample weights of a cluster bootstrap (multinomial cluster counts); None with fewer
    than two clusters: one cluster cannot be resampled, so such a metric reports no interval (as
    evalkit.results.metrics does) instead of a zero-width one."""
    import numpy as np

    _, cid = np.unique(np.asarray([str(c) for c in clusters], dtype=object), return_inverse=True)
    m = int(cid.max()) + 1 if len(cid) else 0
    if m < 2:
        return None
    rng = np.random.default_rng(seed)
    wc = rng.multinomial(m, np.full(m, 1.0 / m), size=n_boot).astype(np.float64)
    return wc[:, cid]


def _ci(boot, value, scale=100.0) -> list:
    import numpy as np

    boot = np.asarray(boot, dtype=np.float64)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0 or value is None:
        return [None, None]
    a = (1 - CONFIDENCE) / 2
    lo, hi = np.quantile(boot, [a, 1 - a])
    return [round(float(lo) * scale, 4), round(float(hi) * scale, 4)]


def wer_metric(errors: Sequence[float], words: Sequence[float], clusters: Sequence[str],
               n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    import numpy as np

    e = np.asarray(errors, dtype=np.float64)
    w = np.asarray(words, dtype=np.float64)
    if e.size == 0 or w.sum() == 0:
        return {"value": None, "ci": [None, None], "n": 0, "higher_is_better": False}
    value = float(e.sum() / w.sum())
    W = bootstrap_weights(clusters, n_boot, seed)
    if W is None:
        ci = [None, None]
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            ci = _ci((W @ e) / (W @ w), value)
    return {"value": round(value * 100, 4), "ci": ci, "n": int(e.size),
            "total_errors": int(e.sum()), "total_words": int(w.sum()), "higher_is_better": False}


def macc(y_true: Sequence[int], y_pred: Sequence[int], weights=None) -> float | None:
    """Mean over classes present in y_true of per-class accuracy (weighted: rows of `weights`)."""
    import numpy as np

    y = np.asarray(y_true)
    ok = (np.asarray(y_pred) == y).astype(np.float64)
    classes = np.unique(y)
    onehot = (y[:, None] == classes[None, :]).astype(np.float64)  # [n, C]
    if weights is None:
        weights = np.ones((1, len(y)))
    W = np.atleast_2d(weights)
    counts = W @ onehot
    hits = W @ (onehot * ok[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(counts > 0, hits / np.where(counts > 0, counts, 1), np.nan)
    return np.nanmean(acc, axis=1)


def macc_metric(y_true, y_pred, clusters, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    import numpy as np

    if len(y_true) == 0:
        return {"value": None, "ci": [None, None], "n": 0, "higher_is_better": True}
    value = float(macc(y_true, y_pred)[0])
    W = bootstrap_weights(clusters, n_boot, seed)
    ci = [None, None] if W is None else _ci(macc(y_true, y_pred, W), value)
    return {"value": round(value * 100, 4), "ci": ci, "n": len(y_true),
            "classes": int(len(np.unique(np.asarray(y_true)))), "higher_is_better": True}


def weighted_ap(y, s, W):
    """Average precision per bootstrap row: y [n] in {0,1}, s [n] scores, W [B, n]
    sample weights -> [B]. Same definition as sklearn's average_precision_score
    (step-wise precision-recall, tied scores form one threshold)."""
    import numpy as np

    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order].astype(np.float64)
    Ws = W[:, order]
    tp = np.cumsum(Ws * y_sorted, axis=1)
    allc = np.cumsum(Ws, axis=1)
    ends = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]  # last index of each tie group
    tp, allc = tp[:, ends], allc[:, ends]
    total = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(allc > 0, tp / np.where(allc > 0, allc, 1), 0.0)
        recall = tp / total
    d_recall = np.diff(np.concatenate([np.zeros((W.shape[0], 1)), recall], axis=1), axis=1)
    ap = np.sum(d_recall * precision, axis=1)
    return np.where(total[:, 0] > 0, ap, np.nan)


def map_metric(Y, S, clusters, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """mAP over classes with at least one positive. Y, S: [n, K]."""
    import numpy as np

    Y = np.asarray(Y, dtype=np.float64)
    S = np.asarray(S, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[0] == 0:
        return {"value": None, "ci": [None, None], "n": 0, "classes": 0, "higher_is_better": True}
    keep = Y.sum(axis=0) > 0
    if not keep.any():
        return {"value": None, "ci": [None, None], "n": int(Y.shape[0]), "classes": 0, "higher_is_better": True}
    from sklearn.metrics import average_precision_score

    value = float(average_precision_score(Y[:, keep], S[:, keep], average="macro"))
    W = bootstrap_weights(clusters, n_boot, seed)
    if W is None:
        ci = [None, None]
    else:
        aps = np.stack([weighted_ap(Y[:, k], S[:, k], W) for k in np.nonzero(keep)[0]], axis=1)
        with np.errstate(invalid="ignore"):
            ci = _ci(np.nanmean(aps, axis=1) if aps.size else np.array([]), value)
    return {"value": round(value * 100, 4), "ci": ci, "n": int(Y.shape[0]),
            "classes": int(keep.sum()), "higher_is_better": True}
