"""`evalkit report RUN_DIR... --out report.html`: one self-contained HTML file per set of runs.

No server, no network, no CDN: the CSS and JS are inline, the figures are SVG drawn here. The page
holds a summary table per (model, task), the diagnostics (audio reliance, position bias, extraction,
long audio), figures (WER vs SNR, per-group bars with CIs, position histograms), a sample browser
and, for two or more runs of one task, a per-sample comparison with the paired test.

Safety: model outputs are untrusted text. Everything this module writes into HTML goes through
`html.escape`; the sample data travels as one JSON blob in a `<script type="application/json">`
whose `<`, `>` and `&` are written as \\u003c, \\u003e, \\u0026 (so `</script>` or `<!--` in an output
cannot end the block), and the page's JS puts it into the DOM with `textContent` only.

Audio: each clip is linked by its path relative to the report's folder (the report moves with its
runs and data); `--embed-audio` puts the bytes in the page instead (data: URIs, large). Clips that
are no file (hub bytes, arrays) show their label.

Scale: the sample list is rendered by JS, a page at a time, from the blob; 10,000 samples open in
well under 2 s (bench/bench_report.py measures it).
"""
from __future__ import annotations

import base64
import html
import json
import math
import mimetypes
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from evalkit.engine.fingerprint import sha256_file
from evalkit.engine.runner import long_audio_summary
from evalkit.engine.store import latest_by_key, read_records
from evalkit.protocol.circular import collapse_rotations
from evalkit.protocol.extract import FAILURE_STAGES
from evalkit.results.diagnostics import extraction_diagnostics, position_bias
from evalkit.results.leaderboard import load_run, model_label
from evalkit.results.metrics import ci_bounds, paired_drop_pvalue
from evalkit.results.plot import group_order

#: error_kind of records whose input never reached the model (the runner's INPUT_ERROR): the
#: metrics leave them out, so the report's diagnostics do too
INPUT_ERROR = "input"
SPLIT_GROUPING = "axis"  # perception / reasoning
PAGE_SIZE = 50
MAX_BAR_GROUPS = 40  # a grouping with more values than this is listed in a table, not drawn
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]

esc = html.escape


class ReportError(ValueError):
    """A run directory the report cannot read (named in the message)."""


def load_run_dir(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(run.json, its latest record per key) of a run directory."""
    path = Path(path)
    if path.is_file() and path.name == "run.json":
        path = path.parent
    run = load_run(path)
    samples = path / "samples.jsonl"
    if not samples.exists():
        raise ReportError(f"{path}: no samples.jsonl next to run.json")
    records = list(latest_by_key(read_records(samples)).values())
    for r in records:
        if "key" not in r or "sample_id" not in r:
            raise ReportError(f"{samples}: a record without key/sample_id ({str(r)[:80]})")
    return run, records


# ---------------------------------------------------------------- formatting

def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}f}"
    return str(v)


def fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def fmt_stat(stat: dict[str, Any] | None) -> str:
    """"value [lo, hi] (n)" of a metric cell."""
    if not stat or stat.get("value") is None:
        return "–"
    b = ci_bounds(stat)
    ci = f" [{fmt(b[0])}, {fmt(b[1])}]" if b else " [no CI]"
    return f"{fmt(stat['value'])}{ci} (n={stat.get('n', '?')})"


def model_name(run: dict[str, Any]) -> str:
    """The model's label; `render` sets `_report_model` (label and run id) where two runs of one task
    would share one (the same adapter with other settings)."""
    return run.get("_report_model") or model_label(run)


def run_label(run: dict[str, Any]) -> str:
    return f"{model_name(run)} · {run['task']['name']}"


def distinct_models(runs: list[dict[str, Any]]) -> list[str]:
    plain = [(model_label(r), r["task"]["name"]) for r in runs]
    return [f"{p[0]} ({r['run_id'][:8]})" if plain.count(p) > 1 else p[0] for p, r in zip(plain, runs)]


# ---------------------------------------------------------------- figures (inline SVG)

def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    if v <= 100 and v > 50:
        return 100.0
    mag = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= v:
            return m * mag
    return 10 * mag


def _title_width(title: str) -> int:
    return int(len(title) * 6.8)


def _y_axis(x0: float, y0: float, h: float, w: float, top: float, label: str) -> list[str]:
    out = [f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 - h}" class="ax"/>',
           f'<line x1="{x0}" y1="{y0}" x2="{x0 + w}" y2="{y0}" class="ax"/>']
    for i in range(5):
        v = top * i / 4
        y = y0 - h * i / 4
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" class="grid"/>')
        digits = 0 if top >= 10 or float(top / 4).is_integer() else 2
        out.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">{esc(fmt(float(v), digits))}</text>')
    out.append(f'<text x="12" y="{y0 - h / 2:.1f}" transform="rotate(-90 12 {y0 - h / 2:.1f})" '
               f'text-anchor="middle">{esc(label)}</text>')
    return out


def _x_label(x: float, y: float, text: str, rotate: bool) -> str:
    if rotate:
        return (f'<text x="{x:.1f}" y="{y:.1f}" transform="rotate(-35 {x:.1f} {y:.1f})" '
                f'text-anchor="end">{esc(text[:28])}</text>')
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="middle">{esc(text)}</text>'


def bars_svg(title: str, items: list[tuple[str, float | None, tuple[float, float] | None, int]],
             ylabel: str) -> str:
    """One bar per (label, value, CI, n), with the CI as a whisker."""
    shown = [it for it in items if it[1] is not None]
    rotate = any(len(it[0]) > 6 for it in shown)
    bw = 34
    w = max(260, len(shown) * (bw + 10) + 20, _title_width(title))
    h, x0, top_pad = 160, 56, 30
    bottom = 90 if rotate else 40
    top = _nice_max(max([it[2][1] if it[2] else it[1] for it in shown] + [1e-9]))
    y0 = top_pad + h
    parts = [f'<svg class="fig" role="img" width="{x0 + w + 10}" height="{y0 + bottom}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{esc(title)}</title>',
             f'<text x="{x0}" y="16" class="title">{esc(title)}</text>', *_y_axis(x0, y0, h, w, top, ylabel)]
    for i, (label, value, ci, n) in enumerate(shown):
        x = x0 + 10 + i * (bw + 10)
        bh = h * value / top
        parts.append(f'<rect x="{x}" y="{y0 - bh:.1f}" width="{bw}" height="{bh:.1f}" fill="{PALETTE[0]}">'
                     f'<title>{esc(label)}: {esc(fmt(value))}'
                     f'{esc(f" [{fmt(ci[0])}, {fmt(ci[1])}]") if ci else ""} (n={n})</title></rect>')
        if ci:
            cx, ylo, yhi = x + bw / 2, y0 - h * ci[0] / top, y0 - h * ci[1] / top
            parts.append(f'<path d="M{cx:.1f} {ylo:.1f}V{yhi:.1f}M{cx - 5:.1f} {ylo:.1f}h10M{cx - 5:.1f} '
                         f'{yhi:.1f}h10" class="ci"/>')
        parts.append(_x_label(x + bw / 2, y0 + 14, label, rotate))
    parts.append("</svg>")
    return "".join(parts)


def lines_svg(title: str, x_labels: list[str], series: list[tuple[str, dict[str, Any]]], ylabel: str,
              xlabel: str) -> str:
    """One line per (name, {x label: metric cell}) with CI whiskers; x is categorical."""
    w, h, x0, top_pad = max(320, 60 * len(x_labels), _title_width(title)), 180, 56, 30
    vals = [ci_bounds(c)[1] if ci_bounds(c) else c["value"]
            for _, cells in series for c in cells.values() if c and c.get("value") is not None]
    top = _nice_max(max(vals + [1e-9]))
    y0 = top_pad + h
    step = w / max(1, len(x_labels))
    xs = {k: x0 + step * (i + 0.5) for i, k in enumerate(x_labels)}
    legend_h = 16 * len(series)
    parts = [f'<svg class="fig" role="img" width="{x0 + w + 10}" height="{y0 + 44 + legend_h}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{esc(title)}</title>',
             f'<text x="{x0}" y="16" class="title">{esc(title)}</text>', *_y_axis(x0, y0, h, w, top, ylabel)]
    for k in x_labels:
        parts.append(_x_label(xs[k], y0 + 14, k, False))
    parts.append(f'<text x="{x0 + w / 2}" y="{y0 + 30}" text-anchor="middle">{esc(xlabel)}</text>')
    for si, (name, cells) in enumerate(series):
        color = PALETTE[si % len(PALETTE)]
        pts = [(xs[k], y0 - h * c["value"] / top, c) for k in x_labels
               if (c := cells.get(k)) and c.get("value") is not None]
        if len(pts) > 1:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                         + " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in pts) + '"/>')
        for x, y, c in pts:
            b = ci_bounds(c)
            if b:
                parts.append(f'<path d="M{x:.1f} {y0 - h * b[0] / top:.1f}V{y0 - h * b[1] / top:.1f}" '
                             f'stroke="{color}" class="ci"/>')
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}">'
                         f'<title>{esc(name)}: {esc(fmt_stat(c))}</title></circle>')
        ly = y0 + 44 + 16 * si
        parts.append(f'<rect x="{x0}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{x0 + 14}" y="{ly}">{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram_svg(title: str, letters: list[str], predicted: dict[str, int], gold: dict[str, int]) -> str:
    """Predicted vs gold counts per position, side by side."""
    bw, gap = 16, 14
    w = max(200, len(letters) * (2 * bw + gap) + 20, _title_width(title))
    h, x0, top_pad = 120, 44, 30
    top = 4 * math.ceil(max([*predicted.values(), *gold.values(), 1]) / 4)  # whole counts on the 4 ticks
    y0 = top_pad + h
    parts = [f'<svg class="fig" role="img" width="{x0 + w + 10}" height="{y0 + 46}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{esc(title)}</title>',
             f'<text x="{x0}" y="16" class="title">{esc(title)}</text>', *_y_axis(x0, y0, h, w, top, "count")]
    for i, letter in enumerate(letters):
        x = x0 + 10 + i * (2 * bw + gap)
        for j, (what, counts, color) in enumerate((("predicted", predicted, PALETTE[1]), ("gold", gold, "#999"))):
            c = counts.get(letter, 0)
            bh = h * c / top
            parts.append(f'<rect x="{x + j * bw}" y="{y0 - bh:.1f}" width="{bw}" height="{bh:.1f}" fill="{color}">'
                         f'<title>{esc(letter)} {what}: {c}</title></rect>')
        parts.append(_x_label(x + bw, y0 + 14, letter, False))
    parts.append(f'<rect x="{x0}" y="{y0 + 26}" width="10" height="10" fill="{PALETTE[1]}"/>'
                 f'<text x="{x0 + 14}" y="{y0 + 35}">predicted</text>'
                 f'<rect x="{x0 + 84}" y="{y0 + 26}" width="10" height="10" fill="#999"/>'
                 f'<text x="{x0 + 98}" y="{y0 + 35}">gold</text></svg>')
    return "".join(parts)


# ---------------------------------------------------------------- per-run facts

def _answered(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("error_kind") != INPUT_ERROR]


def diagnostics_of(run: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """run.json's diagnostics; entries it lacks (runs made before they existed) are computed
    here from the records by the same functions."""
    diag = dict(run.get("diagnostics") or {})
    answered = _answered(records)
    if "extraction" not in diag:
        diag["extraction"] = extraction_diagnostics(answered)
    if "position_bias" not in diag:
        bias = position_bias(answered)
        if bias is not None:
            diag["position_bias"] = bias
    return diag


def outcome(scores: dict[str, Any], score_key: tuple[str, bool] | None) -> bool | None:
    """Correct (True) / wrong (False) / neither (None) for the sample browser's filter: a 0/1
    per-sample main score (accuracy) as it is; an error count (`wer_errors`) is correct at 0
    errors (an exact transcript). Anything else (no per-sample score, a fraction) is neither."""
    if score_key is None:
        return None
    name, higher_is_better = score_key
    v = scores.get(name)
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if name.endswith("_errors"):
        return v == 0
    if v not in (0, 1):
        return None
    return (v == 1) if higher_is_better else (v == 0)


def paired_score_name(run: dict[str, Any], records: list[dict[str, Any]]) -> tuple[str, bool] | None:
    """(per-sample score key, higher is better) the paired comparison of two runs uses: the main
    metric's own per-sample score, else its error count `<main>_errors` (a corpus rate such as WER
    over the same references: the difference of the rates is the summed per-sample difference of
    errors over a fixed denominator, so a paired test on errors tests the rate), else None."""
    main = run["task"]["main_metric"]
    hib = (run.get("metrics", {}).get(main) or {}).get("higher_is_better", True)
    names = {k for r in records for k in (r.get("scores") or {})}
    if main in names:
        return main, hib
    if f"{main}_errors" in names:
        return f"{main}_errors", False
    return None


# ---------------------------------------------------------------- the page's data

def _prompt_text(prompt: Any) -> str:
    if not isinstance(prompt, list):
        return ""
    lines = []
    for m in prompt:
        parts = []
        for p in m.get("content") or []:
            if p.get("type") == "audio":
                parts.append(f"[audio: {p.get('audio')}]")
            else:
                parts.append(str(p.get("text", "")))
        lines.append(f"{m.get('role', '?')}: " + "\n".join(parts))
    return "\n\n".join(lines)


class _Clips:
    """The audio table of the page: one entry per distinct clip, linked relative to the report
    (or embedded), so questions sharing a clip share an entry."""

    def __init__(self, out_dir: Path, embed: bool):
        self.out_dir, self.embed = out_dir, embed
        self.index: dict[str, int] = {}
        self.table: list[dict[str, Any]] = []

    def src(self, path: Path) -> str:
        if self.embed:
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        try:
            rel = os.path.relpath(path, self.out_dir)
        except ValueError:  # another drive (Windows): no relative path exists
            return path.resolve().as_uri()
        return quote(rel.replace(os.sep, "/"), safe="/")

    def add(self, ref: Any, sha256: str | None, bases: list[Path]) -> int:
        """The clip's entry: an absolute path that exists is linked as it is; a label relative to the
        data (SSEU's "<set>/clips/x.flac", a manifest's relative path) is looked up under `bases`
        (the task's audio_root and data folders), with and without its first segment, and linked
        only when the file found has the sha256 the record holds, so a label never links to
        another clip."""
        ref = str(ref)
        if ref not in self.index:
            entry: dict[str, Any] = {"label": ref, "src": None}
            path = self.find(ref, sha256, bases)
            if path is not None:
                entry["src"] = self.src(path)
            self.index[ref] = len(self.table)
            self.table.append(entry)
        return self.index[ref]

    @staticmethod
    def find(ref: str, sha256: str | None, bases: list[Path]) -> Path | None:
        path = Path(ref)
        if path.is_absolute():
            return path if path.is_file() else None
        if not sha256 or ".." in path.parts:
            return None
        tails = [path] + ([Path(*path.parts[1:])] if len(path.parts) > 1 else [])
        for base in bases:
            for tail in tails:
                candidate = base / tail
                if candidate.is_file() and sha256_file(candidate) == sha256:
                    return candidate
        return None


def audio_bases(run: dict[str, Any]) -> list[Path]:
    """Folders a relative audio label may be under: the task's audio_root, its data folder (a
    file's folder) and that folder's parent."""
    opts = (run.get("task") or {}).get("options") or {}
    out: list[Path] = []
    if opts.get("audio_root"):
        out.append(Path(opts["audio_root"]))
    if opts.get("data"):
        d = Path(opts["data"])
        d = d if d.is_dir() else d.parent
        out += [d, d.parent]
    return [b.resolve() for b in dict.fromkeys(out)]


def _sample_row(ri: int, run: dict[str, Any], r: dict[str, Any], groupings: list[str], clips: _Clips,
                score_key: tuple[str, bool] | None, bases: list[Path]) -> dict[str, Any]:
    scores = r.get("scores") or {}
    stage = r.get("extraction_stage")
    extracted = r.get("extracted")
    extra = r.get("extra") or {}
    ok = outcome(scores, score_key)
    return {
        "r": ri, "k": r["key"], "id": r["sample_id"],
        "g": {g: str((r.get("metadata") or {}).get(g)) for g in groupings},
        "q": _prompt_text(r.get("prompt")),
        "ch": r.get("choices"),
        "gold": None if r.get("gold") is None else "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[r["gold"]],
        "o": r.get("output"),
        "x": extracted if isinstance(extracted, str) or extracted is None else json.dumps(extracted, ensure_ascii=False),
        "st": stage,
        "sc": scores,
        "e": r.get("error"),
        "ek": r.get("error_kind"),
        "a": [clips.add(a.get("ref"), a.get("sha256"), bases) for a in (r.get("audio") or [])],
        "ok": ok,
        "xf": bool(stage in FAILURE_STAGES and r.get("error") is None),
        "sec": [extra.get("audio_seconds"), extra.get("audio_seconds_fed")]
        if "audio_seconds" in extra or "audio_seconds_fed" in extra else None,
    }


def compare_runs(a: tuple[dict, list], b: tuple[dict, list]) -> dict[str, Any]:
    """Per-sample comparison of two runs of one task: samples both answered, where their answers or
    scores differ, and the one-sided paired tests (`paired_drop_pvalue`) in each direction."""
    (ra, reca), (rb, recb) = a, b
    ka, kb = paired_score_name(ra, reca), paired_score_name(rb, recb)
    out: dict[str, Any] = {"a": run_label(ra), "b": run_label(rb), "task": ra["task"]["name"],
                           "same_data": ra["task"].get("data_hash") == rb["task"].get("data_hash")}
    if ka is None or ka != kb:
        out["reason"] = (f"no per-sample score for {ra['task']['main_metric']!r} to pair on" if ka is None
                         else f"the runs score differently ({ka[0]} vs {kb[0]})")
        out["disagree"] = []
        return out
    name, hib = ka
    sa = {r["sample_id"]: r for r in collapse_rotations(_answered(reca))}
    sb = {r["sample_id"]: r for r in collapse_rotations(_answered(recb))}
    shared = [sid for sid in sa if sid in sb
              and sa[sid]["scores"].get(name) is not None and sb[sid]["scores"].get(name) is not None]
    va = [float(sa[s]["scores"][name]) for s in shared]
    vb = [float(sb[s]["scores"][name]) for s in shared]
    same = lambda x, y: json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)
    disagree = [s for s, x, y in zip(shared, va, vb) if x != y or not same(sa[s].get("extracted"), sb[s].get("extracted"))]
    better = lambda x, y: (x > y) if hib else (x < y)
    out.update({
        "score": name, "higher_is_better": hib, "paired": len(shared),
        "only_a": len(set(sa) - set(sb)), "only_b": len(set(sb) - set(sa)),
        "a_better": sum(better(x, y) for x, y in zip(va, vb)), "b_better": sum(better(y, x) for x, y in zip(va, vb)),
        "mean_a": sum(va) / len(va) if va else None, "mean_b": sum(vb) / len(vb) if vb else None,
        "p_b_worse": paired_drop_pvalue(vb, va, hib) if shared else None,
        "p_a_worse": paired_drop_pvalue(va, vb, hib) if shared else None,
        "disagree": disagree,
    })
    return out


# ---------------------------------------------------------------- HTML

def _summary_rows(loaded: list[tuple[dict, list]], diags: list[dict]) -> str:
    head = ["model", "task", "status", "main metric", "perception", "reasoning", "official", "errors",
            "extraction failures", "audio reliance", "position bias (χ²)", "long audio"]
    rows = []
    for (run, records), diag in zip(loaded, diags):
        main = run["task"]["main_metric"]
        splits = (run.get("groups") or {}).get(SPLIT_GROUPING, {})
        c = run.get("counts") or {}
        ext = diag.get("extraction") or {}
        synthetic = " (synthetic data)" if (run["task"].get("source") or {}).get("synthetic") else ""
        cells = [esc(model_name(run)), esc(run["task"]["name"] + synthetic), esc(str(run.get("status"))),
                 f"<b>{esc(main)}</b> {esc(fmt_stat(run.get('metrics', {}).get(main)))}",
                 esc(fmt_stat((splits.get("perception") or {}).get(main))),
                 esc(fmt_stat((splits.get("reasoning") or {}).get(main))),
                 esc(fmt_stat(run.get("metrics", {}).get(f"{main}_official"))),
                 esc(fmt(c.get("errors"))),
                 esc(f"{c.get('extraction_failures', ext.get('failures'))}"
                     + (f" ({100 * ext['failure_rate']:.1f}%)" if ext.get("failure_rate") is not None else ""))]
        ar = diag.get("audio_reliance")
        if ar:
            parts = [f"with audio {fmt_stat(ar.get('with_audio'))}", f"silence {fmt_stat(ar.get('silence'))}"]
            if ar.get("no_audio"):
                parts.append(f"no audio {fmt_stat(ar.get('no_audio'))}")
            for k in ("silence", "no_audio"):
                u = ar.get(f"unchanged_{k}")
                if u is not None:
                    parts.append(f"unchanged ({k}): {100 * u:.0f}%")
            flag = (f'<span class="bad">IGNORES ITS AUDIO? (≥ {100 * ar.get("threshold", 0.9):.0f}% unchanged)</span><br>'
                    if ar.get("flag") else "")
            cells.append(flag + "<br>".join(esc(p) for p in parts))
        else:
            cells.append('<span class="dim">not run (evalkit run --audio-check)</span>')
        pb = diag.get("position_bias")
        if pb:
            comb = pb.get("combined") or {}
            warn = "" if pb.get("gold_balanced") else '<br><span class="warn">gold not balanced over positions</span>'
            p = comb.get("p_value")
            cls = "bad" if p is not None and p < 0.01 else ""
            cells.append(f'<span class="{cls}">χ²={esc(fmt(comb.get("statistic")))}, df={esc(fmt(comb.get("df")))}, '
                         f'p={esc(fmt_p(p))}</span>{warn}')
        else:
            cells.append('<span class="dim">not multiple choice</span>')
        la = run.get("long_audio") or long_audio_summary(records)
        if la:
            fed = la.get("fed_known", la["records"])
            most = "" if la.get("most_fed_s") is None else f", most fed {la['most_fed_s']:.1f} s"
            cut = f"{la['truncated']} of {fed} cut" if fed else "fed seconds not reported"
            cells.append(esc(f"{cut} (longest {la['longest_s']:.1f} s{most}; {la['records']} with audio)"))
        else:
            cells.append('<span class="dim">not reported</span>')
        rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    return ("<table class='summary'><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _run_section(i: int, run: dict, records: list, diag: dict) -> str:
    main = run["task"]["main_metric"]
    parts = [f'<section class="run" id="run-{i}"><h3>{esc(run_label(run))}</h3>',
             f'<p class="dim">run {esc(run["run_id"])} · {esc(str(run.get("status")))} · '
             f'{esc(str((run.get("counts") or {}).get("records", len(records))))} records</p>']
    metrics = run.get("metrics") or {}
    parts.append("<table><tr><th>metric</th><th>value [95% CI] (n)</th></tr>"
                 + "".join(f"<tr><td>{esc(k)}</td><td>{esc(fmt_stat(v))}</td></tr>" for k, v in metrics.items())
                 + "</table>")
    figs = []
    for g, cells in (run.get("groups") or {}).items():
        keys = group_order(list(cells))
        if g == "snr":
            continue  # drawn as a line over SNR below
        if len(keys) > MAX_BAR_GROUPS:
            parts.append(f"<p class='dim'>{esc(g)}: {len(keys)} groups (table only)</p>")
            parts.append("<table>" + "".join(f"<tr><td>{esc(k)}</td><td>{esc(fmt_stat(cells[k].get(main)))}</td></tr>"
                                             for k in keys) + "</table>")
            continue
        items = [(k, (cells[k].get(main) or {}).get("value"), ci_bounds(cells[k].get(main)),
                  (cells[k].get(main) or {}).get("n", 0)) for k in keys]
        if any(v is not None for _, v, _, _ in items):
            figs.append(bars_svg(f"{main} by {g}", items, f"{main} (%)"))
    if "snr" in (run.get("groups") or {}):
        snr = run["groups"]["snr"]
        keys = group_order(list(snr))
        for metric in sorted({m for c in snr.values() for m in c}):
            figs.append(lines_svg(f"{metric} vs SNR", keys, [(model_name(run), {k: snr[k].get(metric) for k in keys})],
                                  f"{metric} (%)", "SNR (dB)"))
    pb = diag.get("position_bias")
    if pb:
        for k, d in pb["by_choice_count"].items():
            letters = list(d["gold"])
            t = d["chi_square"]
            figs.append(histogram_svg(f"{k} choices: predicted vs gold position (χ²={fmt(t['statistic'])}, "
                                      f"p={fmt_p(t['p_value'])})", letters, d["predicted"], d["gold"]))
            acc = d["accuracy_by_gold_position"]
            figs.append(bars_svg(f"{k} choices: accuracy by gold position",
                                 [(x, acc[x].get("value"), ci_bounds(acc[x]), acc[x].get("n", 0)) for x in letters],
                                 "accuracy (%)"))
    if figs:
        parts.append('<div class="figs">' + "".join(figs) + "</div>")
    if pb:
        rows = []
        for k, d in pb["by_choice_count"].items():
            t = d["chi_square"]
            rows.append(f"<tr><td>{esc(k)}</td><td>{d['records']}</td><td>{d['unextracted']}</td>"
                        f"<td>{esc(fmt(t['statistic']))}</td><td>{t['df']}</td><td>{esc(fmt_p(t['p_value']))}</td>"
                        f"<td>{esc(fmt(d['gold_balanced']))}</td><td>{esc(t.get('reason') or t.get('note') or '')}</td></tr>")
        parts.append("<h4>Position bias</h4><table><tr><th>choices</th><th>records</th><th>no answer</th><th>χ²</th>"
                     "<th>df</th><th>p</th><th>gold balanced</th><th>note</th></tr>" + "".join(rows) + "</table>")
        if not pb.get("gold_balanced"):
            parts.append("<p class='warn'>The gold is not spread evenly over positions (not a --choices balanced "
                         "run, or a subset of one): the test then confounds accuracy with position preference.</p>")
    ext = diag.get("extraction")
    if ext and ext.get("records"):
        parts.append("<h4>Extraction</h4><table><tr><th>stage</th><th>count</th><th>rate</th></tr>"
                     + "".join(f"<tr class='{'bad' if v['failure'] else ''}'><td>{esc(s)}</td><td>{v['count']}</td>"
                               f"<td>{100 * v['rate']:.1f}%</td></tr>" for s, v in ext["by_stage"].items())
                     + "</table>")
        if ext["examples"]:
            parts.append("<p>Example failures:</p><ul class='examples'>"
                         + "".join(f"<li><code>{esc(str(e['key']))}</code> ({esc(str(e['stage']))}): "
                                   f"<pre>{esc(str(e['output']))}</pre></li>" for e in ext["examples"]) + "</ul>")
    parts.append("</section>")
    return "".join(parts)


def _snr_overview(loaded: list[tuple[dict, list]]) -> str:
    """WER vs SNR across every run that has both (SSEU runs), on one figure."""
    series, keys = [], []
    for run, _ in loaded:
        snr = (run.get("groups") or {}).get("snr")
        if snr and any("wer" in c for c in snr.values()):
            series.append((run_label(run), {k: c.get("wer") for k, c in snr.items()}))
            keys += [k for k in snr if k not in keys]
    if len(series) < 2:
        return ""  # one run's curve is already in its own section
    return lines_svg("WER vs SNR, all runs", group_order(keys), series, "WER (%)", "SNR (dB)")


def _comparison_html(comparisons: list[dict[str, Any]]) -> str:
    if not comparisons:
        return ""
    rows = []
    for ci, c in enumerate(comparisons):
        if c.get("reason"):
            rows.append(f"<tr><td>{esc(c['a'])}</td><td>{esc(c['b'])}</td><td colspan='6'>{esc(c['reason'])}</td></tr>")
            continue
        rows.append(f"<tr><td>{esc(c['a'])}</td><td>{esc(c['b'])}</td><td>{esc(c['score'])}</td><td>{c['paired']}"
                    f"{'' if c['same_data'] else ' (data hashes differ)'}</td>"
                    f"<td>{c['a_better']} / {c['b_better']}</td><td>{esc(fmt(c['mean_a'], 4))} / {esc(fmt(c['mean_b'], 4))}</td>"
                    f"<td>{esc(fmt_p(c['p_a_worse']))} / {esc(fmt_p(c['p_b_worse']))}</td>"
                    f"<td><button type='button' class='cmp' data-cmp='{ci}'>{len(c['disagree'])} disagreements</button></td></tr>")
    return ("<section id='compare'><h2>Comparison (same task)</h2><p class='dim'>Paired on the samples both runs "
            "answered; one-sided paired tests (exact McNemar for 0/1 scores, else a sign-flip permutation test), "
            "p that A is worse than B and that B is worse than A.</p><table><tr><th>A</th><th>B</th><th>score</th>"
            "<th>paired samples</th><th>A better / B better</th><th>mean A / B</th><th>p(A worse) / p(B worse)</th>"
            "<th>where they disagree</th></tr>" + "".join(rows) + "</table><div id='cmp-list'></div></section>")


def safe_json(obj: Any) -> str:
    """JSON for a <script type="application/json"> block: no '<', '>' or '&' survives, so no text
    inside can close the block or open a comment; U+2028/2029 escaped for old parsers."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def render(loaded: list[tuple[dict, list]], out_dir: Path, embed_audio: bool = False) -> str:
    """The report's HTML for (run.json, records) pairs; clip links are relative to `out_dir`."""
    loaded = [({**run, "_report_model": name}, recs)
              for (run, recs), name in zip(loaded, distinct_models([r for r, _ in loaded]))]
    diags = [diagnostics_of(run, recs) for run, recs in loaded]
    clips = _Clips(Path(out_dir).resolve(), embed_audio)
    samples: list[dict[str, Any]] = []
    runs_meta = []
    for ri, (run, records) in enumerate(loaded):
        groupings = list(run.get("groups") or {})
        key = paired_score_name(run, records)
        runs_meta.append({"label": run_label(run), "task": run["task"]["name"], "groupings": groupings,
                          "outcome": key[0] if key else None})
        bases = audio_bases(run)
        samples += [_sample_row(ri, run, r, groupings, clips, key, bases) for r in records]
    index = {(s["r"], s["id"]): i for i, s in enumerate(samples) if "#rot" not in s["k"] or s["k"].endswith("#rot0")}
    comparisons, cmp_blob = [], []
    by_task: dict[str, list[int]] = {}
    for ri, (run, _) in enumerate(loaded):
        by_task.setdefault(run["task"]["name"], []).append(ri)
    for idx in by_task.values():
        for j in idx[1:]:
            c = compare_runs(loaded[idx[0]], loaded[j])
            comparisons.append(c)
            cmp_blob.append({"a": idx[0], "b": j,
                             "rows": [[index.get((idx[0], s)), index.get((j, s))] for s in c["disagree"]]})
    blob = {"runs": runs_meta, "clips": clips.table, "samples": samples, "compare": cmp_blob, "page": PAGE_SIZE}
    title = "evalkit report: " + ", ".join(sorted({f"{model_label(r)} · {r['task']['name']}" for r, _ in loaded}))
    body = [f"<h1>{esc(title)}</h1>", "<section><h2>Summary</h2>", _summary_rows(loaded, diags), "</section>"]
    overview = _snr_overview(loaded)
    if overview:
        body.append(f"<section><h2>WER vs SNR</h2>{overview}</section>")
    body.append("<section><h2>Runs</h2>" + "".join(_run_section(i, r, recs, d)
                                                   for i, ((r, recs), d) in enumerate(zip(loaded, diags))) + "</section>")
    body.append(_comparison_html(comparisons))
    body.append(BROWSER_HTML)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width, initial-scale=1'><title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(body)}<script type='application/json' id='report-data'>{safe_json(blob)}</script>"
            f"<script>{JS}</script></body></html>")


def write_report(run_dirs: list[Path], out: Path, embed_audio: bool = False) -> Path:
    """Read the runs and write the report to `out` (its folder is created)."""
    if not run_dirs:
        raise ReportError("evalkit report: name at least one run directory")
    loaded = [load_run_dir(Path(p)) for p in run_dirs]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render(loaded, out.parent, embed_audio)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out


BROWSER_HTML = """<section id="browser"><h2>Samples</h2>
<div class="filters">
<label>run <select id="f-run"><option value="">all</option></select></label>
<label>group <select id="f-group"><option value="">all</option></select></label>
<label>outcome <select id="f-outcome"><option value="">all</option><option value="correct">correct</option>
<option value="wrong">wrong</option><option value="unscored">not 0/1 scored</option></select></label>
<label>extraction <select id="f-extract"><option value="">all</option><option value="failed">failed</option>
<option value="ok">extracted</option></select></label>
<label>error <select id="f-error"><option value="">all</option><option value="yes">with error</option>
<option value="no">no error</option></select></label>
<label>search <input id="f-text" type="search" placeholder="key, prompt, output, answer, error"></label>
</div>
<p><span id="count">0</span> of <span id="total">0</span> samples
<button type="button" id="prev">&larr; previous</button> <span id="pageinfo"></span>
<button type="button" id="next">next &rarr;</button></p>
<div id="list"></div></section>"""

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 7px;vertical-align:top;text-align:left}
th{background:#f4f4f4}.summary td{font-size:13px}.dim{color:#888}.bad{color:#b00;font-weight:600}.warn{color:#a60}
.figs{display:flex;flex-wrap:wrap;gap:14px}.fig{background:#fff;border:1px solid #eee}
.fig text{font-size:10px;fill:#333}.fig .title{font-size:12px;font-weight:600}
.fig .ax{stroke:#444}.fig .grid{stroke:#eee}.fig .ci{stroke:#222;stroke-width:1.4;fill:none}
.filters{display:flex;flex-wrap:wrap;gap:10px;margin:.5em 0}.filters input{width:18em}
.card{border:1px solid #ddd;border-radius:4px;padding:6px 10px;margin:8px 0}
.card.ok{border-left:5px solid #2a2}.card.wrong{border-left:5px solid #c22}.card.err{background:#fff6f6}
.card pre{white-space:pre-wrap;word-break:break-word;background:#f8f8f8;margin:3px 0;padding:4px;max-height:14em;overflow:auto}
.tag{display:inline-block;background:#eef;border-radius:3px;padding:0 5px;margin-right:4px;font-size:12px}
.lbl{color:#666;font-size:12px}pre{font-size:12px}.examples pre{margin:2px 0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:8px}
"""

JS = r"""
(function(){
"use strict";
var D = JSON.parse(document.getElementById("report-data").textContent);
var S = D.samples, PAGE = D.page, page = 0, shown = [];
function el(tag, cls, text){var e=document.createElement(tag); if(cls) e.className=cls;
  if(text!==undefined && text!==null) e.textContent=String(text); return e;}
function opt(sel, value, text){var o=document.createElement("option"); o.value=value; o.textContent=text; sel.appendChild(o);}
var fRun=document.getElementById("f-run"), fGroup=document.getElementById("f-group"),
    fOut=document.getElementById("f-outcome"), fExt=document.getElementById("f-extract"),
    fErr=document.getElementById("f-error"), fText=document.getElementById("f-text");
D.runs.forEach(function(r,i){opt(fRun, String(i), r.label);});
var groups={};
S.forEach(function(s){for(var g in s.g){var k=g+"="+s.g[g]; groups[k]=(groups[k]||0)+1;}});
Object.keys(groups).sort().forEach(function(k){opt(fGroup, k, k+" ("+groups[k]+")");});
var hay=null;
function haystack(){ if(hay) return hay; hay=S.map(function(s){
  return [s.k, s.q, s.o, s.x, s.e, s.st, s.gold].join("\u0001").toLowerCase();}); return hay;}
function matches(s, i, f){
  if(f.run!=="" && String(s.r)!==f.run) return false;
  if(f.group){var eq=f.group.indexOf("="), g=f.group.slice(0,eq), v=f.group.slice(eq+1);
    if(!(g in s.g) || s.g[g]!==v) return false;}
  if(f.out==="correct" && s.ok!==true) return false;
  if(f.out==="wrong" && s.ok!==false) return false;
  if(f.out==="unscored" && s.ok!==null) return false;
  if(f.ext==="failed" && !s.xf) return false;
  if(f.ext==="ok" && (s.xf || s.e!==null)) return false;
  if(f.err==="yes" && s.e===null) return false;
  if(f.err==="no" && s.e!==null) return false;
  if(f.text && haystack()[i].indexOf(f.text)<0) return false;
  return true;}
function apply(){
  var f={run:fRun.value, group:fGroup.value, out:fOut.value, ext:fExt.value, err:fErr.value,
         text:fText.value.trim().toLowerCase()};
  shown=[]; for(var i=0;i<S.length;i++){ if(matches(S[i], i, f)) shown.push(i); }
  page=0; draw();}
function field(card, label, value, pre){ if(value===null || value===undefined || value==="") return;
  var d=el("div"); d.appendChild(el("span","lbl",label+": "));
  d.appendChild(el(pre?"pre":"span", null, value)); card.appendChild(d);}
function card(i){
  var s=S[i], c=el("div","card"+(s.ok===true?" ok":s.ok===false?" wrong":"")+(s.e!==null?" err":""));
  c.setAttribute("data-key", s.k);
  var h=el("div"); h.appendChild(el("b",null,s.k)); h.appendChild(document.createTextNode(" "));
  h.appendChild(el("span","tag",D.runs[s.r].label));
  for(var g in s.g) h.appendChild(el("span","tag",g+"="+s.g[g]));
  if(s.ok!==null) h.appendChild(el("span","tag",s.ok?"correct":"wrong"));
  if(s.xf) h.appendChild(el("span","tag","extraction failed"));
  c.appendChild(h);
  s.a.forEach(function(ci){var clip=D.clips[ci];
    if(clip.src){var a=el("audio"); a.controls=true; a.preload="none"; a.setAttribute("src", clip.src);
      a.title=clip.label; c.appendChild(a);}
    else c.appendChild(el("div","lbl","audio (no file to link): "+clip.label));});
  if(s.sec) field(c,"audio seconds (had / fed to the model)", s.sec.map(function(x){return x===null||x===undefined?"?":x;}).join(" / "));
  field(c,"prompt",s.q,true);
  if(s.ch) field(c,"choices (shown order)", s.ch.map(function(x,j){return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[j]+") "+x;}).join("\n"), true);
  field(c,"gold",s.gold);
  field(c,"output",s.o===null?"(none)":s.o,true);
  field(c,"extracted",s.x===null?"(none)":s.x); field(c,"stage",s.st);
  field(c,"scores",JSON.stringify(s.sc));
  field(c,"error",s.e===null?null:(s.ek?"["+s.ek+"] ":"")+s.e,true);
  return c;}
function draw(){
  var list=document.getElementById("list"); list.textContent="";
  var pages=Math.max(1, Math.ceil(shown.length/PAGE)); if(page>=pages) page=pages-1;
  var frag=document.createDocumentFragment();
  shown.slice(page*PAGE,(page+1)*PAGE).forEach(function(i){frag.appendChild(card(i));});
  list.appendChild(frag);
  document.getElementById("count").textContent=String(shown.length);
  document.getElementById("total").textContent=String(S.length);
  document.getElementById("pageinfo").textContent="page "+(page+1)+" of "+pages;}
document.getElementById("prev").addEventListener("click",function(){if(page>0){page--;draw();}});
document.getElementById("next").addEventListener("click",function(){if((page+1)*PAGE<shown.length){page++;draw();}});
[fRun,fGroup,fOut,fExt,fErr].forEach(function(x){x.addEventListener("change",apply);});
var timer=null; fText.addEventListener("input",function(){clearTimeout(timer); timer=setTimeout(apply,150);});
Array.prototype.forEach.call(document.querySelectorAll("button.cmp"), function(b){
  b.addEventListener("click", function(){
    var c=D.compare[Number(b.getAttribute("data-cmp"))], box=document.getElementById("cmp-list");
    box.textContent=""; box.appendChild(el("h3",null,D.runs[c.a].label+"  vs  "+D.runs[c.b].label+": "+c.rows.length+" disagreements"));
    c.rows.slice(0,500).forEach(function(p){var row=el("div","pair");
      [p[0],p[1]].forEach(function(i){row.appendChild(i===null?el("div","lbl","(no record)"):card(i));}); box.appendChild(row);});
    if(c.rows.length>500) box.appendChild(el("p","dim","first 500 shown"));});});
apply();
window.__reportRendered = performance.now();
})();
"""
