"""Inference-time strategies: one small layer between a task's requests and the adapter.

`evalkit run --model M --task T --strategy NAME [-S key=value ...]`. A strategy turns the request of
one presentation into sub-calls (several samples, several orders, several turns), sends them through
the runner's normal streaming path, and aggregates their answers into the presentation's record.

What lands where:
- `calls.jsonl` in the run directory: every finished sub-call, appended and flushed as it completes
  (the same crash safety as samples.jsonl). Keys are "<record key>#<strategy tag><index>", e.g.
  "s1#sc3", "s1#rot2#perm1", "s1#turn0". A resumed run reads it and asks only the sub-calls that are
  not on disk (with --retry-errors, also those that failed); aggregation reads only sub-calls that
  were written to it.
- `samples.jsonl`: one record per presentation as always, with `strategy` = {name, options, calls
  (every sub-call: prompt, output, error, extracted answer, stage, and what it showed), aggregate}.
  A voting strategy's record has `output` None (there is no single raw output) and `extracted` =
  the voted letter in the record's own choice order.
- run.json `strategy`: name, options, calls per record, and for voting strategies the accuracy of
  the vote next to the single-sample accuracy of each record's first sub-call (same run, same items);
  what a strategy adds from its run directory (`run_info`: steer's layers, alpha, source and vector).

A strategy that changes the model itself rather than its requests (steer: hooks on decoder layers) does
it in `session(model, run_dir)`, entered once the model is loaded and before its first request, left
after the last however the run ends.

Scoring goes through `score_record`, the one place that knows strategies: the runner, `evalkit score`
and `evalkit merge` all call it, so a rescore re-extracts every sub-call and votes again.

Voting rules (self-consistency, audio-permutation): each sub-call's answer is extracted by the
task's own scorer and mapped back to the original option; extraction failures and failed calls do not
vote; a unique top count wins; a tie, or no vote at all, is an extraction failure (stage "ambiguous"
or "none"), never a guess. A record any of whose sub-calls failed is an error record (its vote would
be over fewer calls than asked): --retry-errors asks the failed sub-calls again, nothing else.
The official scorer reads one raw output; a vote has none, so `accuracy_official` is None on vote
records (counted in `official_excluded`).

Imports nothing from tasks/ or models/ and not the runner (the runner hands in what it needs).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evalkit.engine.fingerprint import sha256_file
from evalkit.engine.secrets import mask_text
from evalkit.engine.store import encode_record, latest_by_key, read_records
from evalkit.jsonio import jsonl_lines
from evalkit.protocol.choices import LETTERS
from evalkit.types import AudioRef, Presentation, Request, Response

CALLS = "calls.jsonl"


class StrategyError(ValueError):
    """A strategy that cannot run on this task / adapter / option set; raised before any work."""


class StrategyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclasses.dataclass
class SubCall:
    """One request a strategy wants asked: its index among the record's sub-calls, the request, and
    what it showed (choices, gold, permutation, maps_to, audio_order, segment...), logged with it."""

    index: int
    request: Request
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Context:
    """What a strategy may use to build sub-requests: the task, the record's presentation and base
    request, a request builder (the runner's build_request), the run's seed and the adapter's rate."""

    task: Any
    presentation: Presentation
    base: Request
    build: Callable[[Presentation], Request]
    seed: int
    sample_rate: int | None


def _int_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()[:4], "big") >> 1


def _append_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The messages with `text` added to the last user turn's last text part (a new part if none)."""
    out = [dict(m, content=list(m["content"])) for m in messages]
    last = max(i for i, m in enumerate(out) if m["role"] == "user")
    parts = out[last]["content"]
    texts = [i for i, c in enumerate(parts) if c["type"] == "text"]
    if texts:
        parts[texts[-1]] = {**parts[texts[-1]], "text": parts[texts[-1]]["text"] + text}
    else:
        parts.append({"type": "text", "text": text.lstrip()})
    return out


# -- chain of thought ------------------------------------------------------------------------------

COT_INSTRUCTION = ("\n\nThink step by step: describe what you hear, consider each option, then decide. "
                   "End your reply with a final line of the form \"Answer: X\", where X is the letter "
                   "of the correct option.")
_ANSWER_LINE = re.compile(r"^\W*(?:final\s+)?answer\s*[:：]", re.I)


def final_answer_line(output: str | None) -> str | None:
    """The reply's last non-empty line when it is an answer line ("Answer: B", "**Final answer:** (B)");
    None otherwise. The chain of thought above it is never read for the answer."""
    if not output:
        return None
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    return lines[-1] if _ANSWER_LINE.match(lines[-1].replace("*", "").strip()) else None


# -- the base class --------------------------------------------------------------------------------


class Strategy:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions
    #: sub-call key tag: "<record key>#<tag><index>"
    tag: ClassVar[str] = "call"
    #: the record's answer is a vote over its sub-calls
    votes: ClassVar[bool] = False
    mcq_only: ClassVar[bool] = True

    def __init__(self, options: StrategyOptions | None = None):
        self.options = options or self.Options()

    def identity(self) -> dict[str, Any]:
        """What enters the run id and run.json."""
        return {"name": self.name, "options": self.options.model_dump(mode="json")}

    # checks, before any work
    def check(self, task, model_cls, spec) -> None:
        if self.mcq_only and not task.is_mcq:
            raise StrategyError(f"--strategy {self.name} needs a multiple-choice task; {task.name!r} is not one")

    def check_selected(self, presentations: list[Presentation], model_cls) -> None:
        """Per-item checks once the items are known (before the model is loaded)."""

    def session(self, model, run_dir: Path) -> contextlib.AbstractContextManager:
        """Entered once the model is loaded, before its first request; left after its last, however the run
        ends (an exception, Ctrl-C): what the strategy changes in the model lives only inside it."""
        return contextlib.nullcontext()

    def run_info(self, run_dir: Path) -> dict[str, Any]:
        """More run.json `strategy` fields, from what the run directory holds."""
        return {}

    # planning
    def plan(self, ctx: Context, done: list[dict[str, Any]]) -> list[SubCall]:
        """The sub-calls still to ask given those finished (in index order); [] when the record is done."""
        raise NotImplementedError

    def final_output(self, calls: list[dict[str, Any]]) -> str | None:
        return None

    # scoring
    def score(self, task, rec: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


def _plain(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k != "strategy"}


def _score_call(task, rec: dict[str, Any], call: dict[str, Any], answer_line: bool) -> dict[str, Any]:
    """The task's own scorer on one sub-call, shown as that sub-call showed its choices."""
    sub = _plain(rec)
    sub.update(key=call["key"], output=call.get("output"), error=call.get("error"))
    for f in ("choices", "gold", "permutation"):
        if f in call:
            sub[f] = call[f]
    if answer_line and sub["error"] is None:
        sub["output"] = final_answer_line(sub["output"])
    return task.score(sub)


class VotingStrategy(Strategy):
    votes = True
    answer_line = False  # read each sub-call's final answer line only (cot=true)

    def _answer_line(self) -> bool:
        return bool(getattr(self.options, "cot", False))

    def _sub_request(self, ctx: Context, p_sub: Presentation) -> Request:
        req = ctx.build(p_sub)
        if self._answer_line():
            req = dataclasses.replace(req, messages=_append_text(req.messages, COT_INSTRUCTION))
        return req

    def score(self, task, rec: dict[str, Any]) -> dict[str, Any]:
        s = dict(rec["strategy"])
        calls = []
        votes: Counter[int] = Counter()
        for call in s["calls"]:
            sc = _score_call(task, rec, call, self._answer_line())
            orig = None
            if sc["extracted"] is not None and call.get("error") is None:
                orig = call["maps_to"][LETTERS.index(sc["extracted"])]
                votes[orig] += 1
            calls.append({**call, "extracted": sc["extracted"], "extraction_stage": sc["extraction_stage"],
                          "scores": sc["scores"], "answer_index": orig})
        perm = rec["permutation"] or list(range(len(rec["choices"])))
        answer = perm[rec["gold"]] if rec["gold"] is not None else None
        top = votes.most_common()
        n = len(calls)
        winner = top[0][0] if top and (len(top) == 1 or top[0][1] > top[1][1]) else None
        base = task.score({**_plain(rec), "output": None})  # the score keys this task reports
        scores: dict[str, float | None] = {k: None for k in base["scores"]}
        if rec.get("error") is not None:  # scored wrong like any error record; its partial votes stay logged
            outcome, stage, winner = "error", "error", None
        elif winner is not None:
            outcome, stage = "vote", "vote"
        else:
            outcome, stage = ("tie", "ambiguous") if top else ("no_votes", "none")
        scores["accuracy"] = None if answer is None else float(winner is not None and winner == answer)
        scores["extraction_failure"] = float(outcome in ("tie", "no_votes"))
        s["calls"] = calls
        s["aggregate"] = {
            "outcome": outcome,
            "votes": {LETTERS[perm.index(i)]: c for i, c in sorted(votes.items())},
            "valid_votes": sum(votes.values()), "calls": n,
            "agreement": (top[0][1] / n) if top and n else 0.0,
        }
        return {"extracted": LETTERS[perm.index(winner)] if winner is not None else None,
                "extraction_stage": stage, "scores": scores, "strategy": s}


class SelfConsistencyOptions(StrategyOptions):
    k: int = Field(5, ge=1, le=64, description="samples per item")
    temperature: float = Field(0.7, ge=0, description="sampling temperature of every sample")
    top_p: float = Field(1.0, gt=0, le=1)
    cot: bool = Field(False, description="ask for reasoning and a final 'Answer: X' line (read alone)")


class SelfConsistency(VotingStrategy):
    name = "self-consistency"
    description = "k samples at a temperature, majority vote over the extracted answers"
    Options = SelfConsistencyOptions
    tag = "sc"

    def check(self, task, model_cls, spec) -> None:
        super().check(task, model_cls, spec)
        if self.options.k > 1 and self.options.temperature == 0:
            raise StrategyError("-S temperature=0 with -S k>1: greedy samples are identical, the vote would "
                                "repeat one answer; use a temperature > 0 or k=1")

    def plan(self, ctx: Context, done: list[dict[str, Any]]) -> list[SubCall]:
        have = {c["index"] for c in done}
        p = ctx.presentation
        out = []
        for i in range(self.options.k):
            if i in have:
                continue
            p_sub = dataclasses.replace(p, key=f"{p.key}#{self.tag}{i}")
            req = self._sub_request(ctx, p_sub)
            base_seed = req.generation.seed if req.generation.seed is not None else ctx.seed
            # a distinct seed per sample: a seeded backend would otherwise return k identical samples
            gen = dataclasses.replace(req.generation, temperature=self.options.temperature,
                                      top_p=self.options.top_p, seed=_int_seed(base_seed, i))
            req = dataclasses.replace(req, generation=gen)
            perm = p.permutation or list(range(len(p.sample.choices)))
            out.append(SubCall(i, req, {"choices": p.choices, "gold": p.gold, "permutation": p.permutation,
                                        "maps_to": perm, "seed": gen.seed}))
        return out


class AudioPermutationOptions(StrategyOptions):
    orders: int = Field(24, ge=1, description="orders per item: all when there are at most this many, "
                                             "else the original order plus a seeded subset")
    cot: bool = Field(False, description="ask for reasoning and a final 'Answer: X' line (read alone)")


def _orders(all_orders: list[list[int]], n: int, seed: int, sample_id: str) -> list[list[int]]:
    """All orders when there are at most n, else the first (identity) plus n-1 others drawn with a
    generator seeded by (seed, sample id)."""
    if len(all_orders) <= n:
        return all_orders
    rest = random.Random(_int_seed(seed, sample_id, "orders")).sample(range(1, len(all_orders)), n - 1)
    return [all_orders[0]] + [all_orders[i] for i in sorted(rest)]


def _option_clips(sample) -> list[int]:
    """Option i names clip option_clips[i]: distinct clip indices, one per option. Clips no option
    names (a reference clip the candidates are compared with) keep their place in every order."""
    oc = sample.metadata.get("option_clips")
    n = len(sample.audio)
    if (not isinstance(oc, list) or len(oc) != len(sample.choices) or len(oc) < 2 or len(set(oc)) != len(oc)
            or not all(isinstance(j, int) and not isinstance(j, bool) and 0 <= j < n for j in oc)):
        raise StrategyError(
            f"sample {sample.id!r}: {n} audio clips but no usable metadata['option_clips'] (option i names clip "
            f"option_clips[i]: distinct indices in 0..{n - 1}, one per option; clips no option names stay in "
            "place); audio-permutation cannot map an answer back to a clip without it")
    return oc


def _clip_orders(n: int, named: list[int]) -> list[list[int]]:
    """Every order of the clips at the positions in `named` (the others fixed), identity first."""
    pos = sorted(named)
    out = []
    for perm in itertools.permutations(pos):
        sigma = list(range(n))
        for at, clip in zip(pos, perm):
            sigma[at] = clip
        out.append(sigma)
    return out


class AudioPermutation(VotingStrategy):
    name = "audio-permutation"
    description = ("MUGEN: the clips of a multi-clip item in several orders, each answer mapped back to its "
                   "clip, majority vote; on single-clip items, rotations of the choices")
    Options = AudioPermutationOptions
    tag = "perm"

    def check_selected(self, presentations: list[Presentation], model_cls) -> None:
        multi = [p.sample for p in presentations if len(p.sample.audio) > 1]
        if multi and "multi_audio" not in set(model_cls.capabilities):
            raise StrategyError(f"--strategy audio-permutation: {len(multi)} items have several clips (first: "
                                f"{multi[0].id!r}) but adapter {model_cls.name!r} lacks the multi_audio capability")
        for s in multi:
            _option_clips(s)

    def plan(self, ctx: Context, done: list[dict[str, Any]]) -> list[SubCall]:
        have = {c["index"] for c in done}
        p = ctx.presentation
        s = p.sample
        k = len(s.choices)
        perm = p.permutation or list(range(k))
        out = []
        if len(s.audio) > 1:
            oc = _option_clips(s)
            orders = _orders(_clip_orders(len(s.audio), oc), self.options.orders, ctx.seed, s.id)
            for i, sigma in enumerate(orders):
                if i in have:
                    continue
                # option o names the clip at position oc[o]; under order sigma that position holds clip sigma[oc[o]]
                meaning = [oc.index(sigma[oc[o]]) for o in range(k)]  # shown option -> original option meant
                answer = meaning.index(s.answer)  # the shown option that now names the gold clip
                sub = dataclasses.replace(s, audio=[s.audio[j] for j in sigma], answer=answer)
                p_sub = Presentation(key=f"{p.key}#{self.tag}{i}", sample=sub, permutation=perm, rotation=p.rotation)
                out.append(SubCall(i, self._sub_request(ctx, p_sub),
                                   {"choices": p_sub.choices, "gold": p_sub.gold, "permutation": perm,
                                    "maps_to": [meaning[o] for o in perm], "audio_order": sigma}))
        else:
            rotations = [[perm[(i + r) % k] for i in range(k)] for r in range(k)]
            for i, rot in enumerate(_orders(rotations, self.options.orders, ctx.seed, s.id)):
                if i in have:
                    continue
                p_sub = Presentation(key=f"{p.key}#{self.tag}{i}", sample=s, permutation=rot, rotation=p.rotation)
                out.append(SubCall(i, self._sub_request(ctx, p_sub),
                                   {"choices": p_sub.choices, "gold": p_sub.gold, "permutation": rot,
                                    "maps_to": rot}))
        return out


class CotOptions(StrategyOptions):
    require_answer_line: bool = Field(True, description="a reply without a final 'Answer: X' line is an "
                                                        "extraction failure (false: read the whole reply)")


class ChainOfThought(Strategy):
    name = "cot"
    description = "reason step by step, then a required final 'Answer: X' line, which alone is read"
    Options = CotOptions
    tag = "cot"

    def plan(self, ctx: Context, done: list[dict[str, Any]]) -> list[SubCall]:
        if done:
            return []
        p_sub = dataclasses.replace(ctx.presentation, key=f"{ctx.presentation.key}#{self.tag}0")
        req = ctx.build(p_sub)
        return [SubCall(0, dataclasses.replace(req, messages=_append_text(req.messages, COT_INSTRUCTION)))]

    def final_output(self, calls):
        return calls[-1].get("output") if calls else None

    def score(self, task, rec: dict[str, Any]) -> dict[str, Any]:
        s = dict(rec["strategy"])
        line = final_answer_line(rec.get("output"))
        read = rec.get("output") if not self.options.require_answer_line and line is None else line
        sc = task.score({**_plain(rec), "output": read}) if rec.get("error") is None else task.score(_plain(rec))
        s["aggregate"] = {"answer_line": line}
        s["calls"] = [{**c, "extracted": sc["extracted"], "extraction_stage": sc["extraction_stage"]}
                      for c in s["calls"]]
        return {**sc, "strategy": s}


# -- relisten --------------------------------------------------------------------------------------

RELISTEN_INSTRUCTION = (
    "\n\nYou may listen to part of the audio again before answering: write <seg>START,END</seg> with "
    "START and END in seconds (the clip lasts {duration:.2f} s) and you will receive that segment. "
    "You can do this at most {rounds} time(s). When you are ready, give your answer without a <seg> tag.")
_SEG = re.compile(r"<seg>(.*?)</seg>", re.S | re.I)


def parse_segment(output: str | None, duration: float) -> dict[str, Any] | None:
    """None when the reply asks for no segment; else {"requested", "start", "end"} (clamped to the clip,
    "clamped": True when it was) or {"requested", "error"} for a malformed or empty tag."""
    if not output or "<seg" not in output.lower():
        return None
    m = _SEG.search(output)
    if m is None:
        return {"requested": output[output.lower().index("<seg"):][:80], "error": "unclosed <seg> tag"}
    raw = m.group(1).strip()
    try:
        a, b = (float(x) for x in raw.split(","))
    except ValueError:
        return {"requested": raw[:80], "error": "expected <seg>START,END</seg> in seconds"}
    if not (math.isfinite(a) and math.isfinite(b)) or b <= a:
        return {"requested": raw[:80], "error": "END must be a number after START"}
    start, end = max(a, 0.0), min(b, duration)
    if end <= start:
        return {"requested": raw[:80], "error": f"the segment lies outside the clip (0 to {duration:.2f} s)"}
    return {"requested": raw[:80], "start": start, "end": end, "clamped": (start, end) != (a, b)}


class RelistenOptions(StrategyOptions):
    rounds: int = Field(2, ge=1, le=16, description="segments the model may ask for, at most")


class Relisten(Strategy):
    name = "relisten"
    description = ("Echo-style: the model asks for a segment with <seg>start,end</seg>, evalkit sends it back "
                   "as audio in the next turn, up to -S rounds=N, then asks for the final answer")
    Options = RelistenOptions
    tag = "turn"
    mcq_only = False

    def check(self, task, model_cls, spec) -> None:
        if task.modality != "audio" or spec.no_audio:
            raise StrategyError("--strategy relisten cuts segments from the item's audio: it needs an audio task "
                                "and cannot run with --no-audio")
        if "multi_turn_audio" not in set(model_cls.capabilities):
            raise StrategyError(f"--strategy relisten sends the clip and then its segments in later turns of one "
                                f"conversation: adapter {model_cls.name!r} lacks the multi_turn_audio capability "
                                "(its earlier turns or the audio of later turns would not reach the model)")

    def check_selected(self, presentations: list[Presentation], model_cls) -> None:
        multi = [p.sample for p in presentations if len(p.sample.audio) != 1]
        if multi:
            raise StrategyError(f"--strategy relisten cuts segments from an item's one clip: {len(multi)} items have "
                                f"{len(multi[0].audio)} clips (first: {multi[0].id!r})")

    def plan(self, ctx: Context, done: list[dict[str, Any]]) -> list[SubCall]:
        clips = ctx.base.audio()
        if not clips:
            raise StrategyError(f"{ctx.presentation.key}: relisten needs an audio clip in the request")
        x, sr = clips[0].load(ctx.sample_rate)
        duration = len(x) / sr
        rounds = self.options.rounds
        messages = _append_text(ctx.base.messages, RELISTEN_INSTRUCTION.format(duration=duration, rounds=rounds))
        if done and (done[-1].get("error") is not None or done[-1].get("final")):
            return []  # a failed turn ends the conversation; so does the answer to the final ask
        final = False
        segment: dict[str, Any] | None = None  # what the next request's last user turn carries
        for served, turn in enumerate(done):  # turn j asked; its segment is served unless j >= rounds
            if turn.get("error") is not None or turn.get("final"):
                return []
            seg = parse_segment(turn.get("output"), duration)
            if seg is None:
                return []  # answered without asking for a segment
            messages = messages + [{"role": "assistant", "content": [{"type": "text", "text": turn["output"]}]}]
            if served >= rounds:  # asked again with no rounds left: the next turn demands the answer
                final, segment = True, None
                messages.append({"role": "user", "content": [{"type": "text", "text": (
                    "You cannot ask for more segments. Give your final answer now, without a <seg> tag.")}]})
                break
            segment = seg
            if "error" in seg:
                feedback = [{"type": "text", "text": f"Your segment request could not be used ({seg['error']}). "
                                                     "Ask again with <seg>START,END</seg> or give your answer."}]
            else:
                i0, i1 = int(round(seg["start"] * sr)), int(round(seg["end"] * sr))
                seg["samples"] = i1 - i0
                ref = AudioRef(array=x[i0:i1].copy(), sample_rate=sr,
                               label=f"segment {seg['start']:.3f}-{seg['end']:.3f}s of {clips[0].describe()}")
                feedback = [{"type": "audio", "audio": ref},
                            {"type": "text", "text": f"This is the segment from {seg['start']:.2f} s to "
                                                     f"{seg['end']:.2f} s. Ask for another segment or give your "
                                                     "answer."}]
            messages.append({"role": "user", "content": feedback})
        i = len(done)
        fields: dict[str, Any] = {"final": final}
        if segment is not None:
            fields["segment"] = segment
        req = Request(key=f"{ctx.presentation.key}#{self.tag}{i}", messages=messages, generation=ctx.base.generation)
        return [SubCall(i, req, fields)]

    def final_output(self, calls):
        return _SEG.sub("", calls[-1].get("output") or "").strip() if calls else None

    def score(self, task, rec: dict[str, Any]) -> dict[str, Any]:
        s = dict(rec["strategy"])
        sc = task.score(_plain(rec))
        segs = [c.get("segment") for c in s["calls"] if c.get("segment")]
        s["aggregate"] = {"turns": len(s["calls"]), "segments": sum("error" not in g for g in segs),
                          "segment_errors": sum("error" in g for g in segs),
                          "clamped": sum(bool(g.get("clamped")) for g in segs),
                          # the model asked again with no rounds left: told to answer (the last call's "final")
                          "final_ask": any(c.get("final") for c in s["calls"])}
        return {**sc, "strategy": s}


# -- steer ---------------------------------------------------------------------------------------

STEER_VECTOR = "steer_vector.safetensors"  # the run's vector, in its run directory
PAIR_KEYS = ("positive", "negative")


class SteerOptions(StrategyOptions):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    layers: str = Field("", description="decoder layers to steer, 0-based, comma-separated (e.g. 12,16); empty with a "
                                         ".safetensors vector: every layer it holds")
    alpha: float = Field(4.0, allow_inf_nan=False, description="scale of the vector added to each chosen layer's "
                                                               "output (0: the plain model)")
    from_: str | None = Field(None, alias="from", description="contrastive pairs (JSONL) or a saved vector "
                                                              "(.safetensors)")

    @field_validator("layers", mode="before")
    @classmethod
    def _canonical_layers(cls, v: Any) -> str:
        """Sorted, comma-separated: "16, 12" and "12,16" are one run."""
        if isinstance(v, str):
            items = [x.strip() for x in v.split(",") if x.strip()]
        else:
            items = list(v) if isinstance(v, list | tuple) else [v]
        out = []
        for x in items:
            if isinstance(x, bool) or not (isinstance(x, int) and x >= 0 or isinstance(x, str) and x.isdigit()):
                raise ValueError(f"{x!r} is not a layer index: give 0-based integers, comma-separated, e.g. 12,16")
            out.append(int(x))
        if len(set(out)) != len(out):
            raise ValueError("a layer is named twice")
        return ",".join(map(str, sorted(out)))

    def layer_list(self) -> list[int]:
        return [int(x) for x in self.layers.split(",")] if self.layers else []


def read_pairs(path: Path) -> list[dict[str, str]]:
    """The contrastive pairs of `-S from=FILE`: one JSON object per line, {"positive": TEXT, "negative": TEXT},
    optionally with "prompt": TEXT (blank lines skipped). Without a prompt each text is a user turn and the
    activation is read at the last token of the generation prompt after it; with one, the prompt is the user
    turn and the two texts are the assistant's reply to it (desired / undesired), read at their last token."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StrategyError(f"-S from={path}: cannot read it ({e})") from None
    pairs = []
    for n, line in jsonl_lines(text):  # split on "\n" only: a pair's text may hold U+2028
        try:
            r = json.loads(line)
        except ValueError as e:
            raise StrategyError(f"-S from={path}: line {n} is not JSON ({e})") from None
        ok = (isinstance(r, dict) and set(PAIR_KEYS) <= set(r) <= {*PAIR_KEYS, "prompt"}
              and all(isinstance(x, str) and x.strip() for x in r.values()))
        if not ok:
            raise StrategyError(f"-S from={path}: line {n}: expected {{\"positive\": TEXT, \"negative\": TEXT}} "
                                "with an optional \"prompt\": TEXT, all non-empty strings")
        pairs.append(r)
    if not pairs:
        raise StrategyError(f"-S from={path}: no pairs in it")
    return pairs


def _safetensors():
    try:
        import safetensors
        import safetensors.numpy
    except ImportError:
        raise StrategyError("--strategy steer reads and writes vectors with the safetensors package: "
                            "pip install 'evalkit[hf]'") from None
    return safetensors


def load_vector(path: Path) -> tuple[dict[int, Any], dict[str, str]]:
    """({layer: float32 vector}, metadata) of a vector file: one 1-D tensor per layer, keyed "layer.<i>"."""
    st = _safetensors()
    try:
        with st.safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
    except Exception as e:
        raise StrategyError(f"-S from={path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    out = {}
    for k, v in tensors.items():
        m = re.fullmatch(r"layer\.(\d+)", k)
        if m is None or v.ndim != 1:
            raise StrategyError(f"{path}: tensor {k!r} {list(v.shape)}: a steering vector file holds one 1-D "
                                "tensor per layer, keyed \"layer.<i>\"")
        out[int(m.group(1))] = v.astype("float32")
    if not out:
        raise StrategyError(f"{path}: holds no vector")
    return out, meta


def vector_sha256(vectors: dict[int, Any]) -> str:
    """The vector's identity: sha256 over each layer in order, "layer.<i>:<size>\n" then its float32
    little-endian bytes (independent of the file's metadata and of how it was written)."""
    import numpy as np

    h = hashlib.sha256()
    for i in sorted(vectors):
        v = np.ascontiguousarray(vectors[i], dtype="<f4")
        h.update(f"layer.{i}:{v.size}\n".encode())
        h.update(v.tobytes())
    return h.hexdigest()


def vector_norms(vectors: dict[int, Any]) -> dict[str, float]:
    import numpy as np

    return {str(i): float(np.linalg.norm(np.asarray(vectors[i], dtype="float64"))) for i in sorted(vectors)}


def _write_vector(path: Path, vectors: dict[int, Any], meta: dict[str, str]) -> None:
    """Atomically (a killed run never leaves half a file that a resume would read)."""
    tmp = path.with_name(path.name + ".tmp")
    _safetensors().numpy.save_file({f"layer.{i}": vectors[i] for i in sorted(vectors)}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _capabilities(model, spec) -> set[str]:
    """An instance's capabilities, or what a class built from the run's -M arguments will have."""
    if isinstance(model, type) and hasattr(model, "capabilities_for"):
        return set(model.capabilities_for(model.Config(**spec.model_args)))
    return set(model.capabilities)


class Steer(Strategy):
    """An additive steering vector on the residual stream (ActAdd / contrastive activation addition).

    Vector: `-S from=FILE.safetensors` (one tensor per layer, "layer.<i>"; `-S layers` picks some, default
    all), or `-S from=PAIRS.jsonl` (read_pairs) with `-S layers`: for each layer, the mean over the pairs'
    positive texts minus the mean over their negative texts of the layer's output at the last token, computed
    once the model is loaded, before its first request. Either way the vector is written to the run directory
    (STEER_VECTOR, with its source in the metadata) and a resume uses that file, so every call of a run is
    asked with the same vector. During the run, alpha * vector[i] is added to decoder layer i's output at every
    position (prompt and generated tokens) through forward hooks, removed when the run ends, however it ends.

    Run id: layers and alpha (the options) and the source: a vector file by `vector_sha256` of the chosen
    layers; a pairs file by the sha256 of its bytes (the vector is a deterministic function of it, the layers
    and the model, whose identity is in the run id too). The path is not identity (its content is).
    run.json `strategy`: layers, alpha, source (kind, path, sha256), vector (file, sha256, per-layer norm).

    The adapter protocol (capability "steer", evalkit.models.hf_common.Steerable): decoder_layers(),
    hidden_size, last_token_activations(requests, layers, continuations) -> array [n, len(layers), hidden],
    and steering(vectors, alpha), a context manager installing and removing the hooks."""

    name = "steer"
    description = ("an additive steering vector on the residual stream of chosen decoder layers (transformers "
                   "adapters), from contrastive prompts or a saved vector")
    Options = SteerOptions
    tag = "steer"
    mcq_only = False

    def __init__(self, options: StrategyOptions | None = None):
        super().__init__(options)
        self._source: dict[str, Any] | None = None

    def _path(self) -> Path:
        return Path(self.options.from_)

    def _is_vector(self) -> bool:
        return self._path().suffix.lower() == ".safetensors"

    def _chosen(self, vectors: dict[int, Any]) -> dict[int, Any]:
        layers = self.options.layer_list() or sorted(vectors)
        missing = [i for i in layers if i not in vectors]
        if missing:
            raise StrategyError(f"-S layers={self.options.layers}: {self._path()} holds no vector for layer(s) "
                                f"{missing} (it holds {sorted(vectors)})")
        return {i: vectors[i] for i in layers}

    def source(self) -> dict[str, Any]:
        """The vector's source as the run id covers it (see the class docstring)."""
        if self._source is None:
            p = self._path()
            if self._is_vector():
                self._source = {"kind": "vector", "sha256": vector_sha256(self._chosen(load_vector(p)[0]))}
            else:
                self._source = {"kind": "pairs", "sha256": sha256_file(p), "pairs": len(read_pairs(p))}
        return self._source

    def identity(self) -> dict[str, Any]:
        options = self.options.model_dump(mode="json", by_alias=True)
        options.pop("from")  # where the file lies is not identity; what it holds is (source)
        out: dict[str, Any] = {"name": self.name, "options": options}
        if self.options.from_ is not None:
            out["source"] = self.source()
        return out

    def check(self, task, model_cls, spec) -> None:
        if "steer" not in _capabilities(model_cls, spec):
            raise StrategyError(f"--strategy steer adds a vector to the decoder layers of a transformers model: adapter "
                                f"{model_cls.name!r} lacks the steer capability (it is declared by hf and its presets, "
                                "and text with -M backend=hf)")
        if self.options.from_ is None:
            raise StrategyError("--strategy steer needs -S from=FILE: contrastive pairs (JSONL, one {\"positive\": "
                                "TEXT, \"negative\": TEXT} per line) or a vector (.safetensors)")
        if not self._path().is_file():
            raise StrategyError(f"-S from={self.options.from_}: no such file")
        if not self._is_vector() and not self.options.layers:
            raise StrategyError("--strategy steer with contrastive pairs needs -S layers=I[,J...]: the decoder layers "
                                "whose output the vector is computed at and added to (0-based)")
        self.source()  # a malformed file, or a vector file without the chosen layers, fails now

    @contextlib.contextmanager
    def session(self, model, run_dir: Path) -> Iterator[None]:
        vectors = self.prepare(model, Path(run_dir))
        with model.steering(vectors, self.options.alpha):
            yield

    def prepare(self, model, run_dir: Path) -> dict[int, Any]:
        """The run's vector: from the run directory on a resume, else loaded or computed, checked against the
        model and written there. Every check runs before the first request."""
        import numpy as np

        if "steer" not in set(model.capabilities):
            raise StrategyError(f"--strategy steer: adapter {model.name!r} lacks the steer capability")
        n, hidden = len(model.decoder_layers()), int(model.hidden_size)
        src = self.source()
        loaded = self._chosen(load_vector(self._path())[0]) if self._is_vector() else None
        layers = sorted(loaded) if loaded is not None else self.options.layer_list()
        bad = [i for i in layers if i >= n]
        if bad:
            raise StrategyError(f"-S layers={','.join(map(str, layers))}: the model has {n} decoder layers "
                                f"(0..{n - 1}); no layer {', '.join(map(str, bad))}")
        saved = run_dir / STEER_VECTOR
        if saved.exists():  # a resumed run: the vector its finished calls were asked with
            vectors, meta = load_vector(saved)
            if meta.get("source_sha256") != src["sha256"] or sorted(vectors) != layers:
                raise StrategyError(f"{saved} was not made from this -S from / -S layers; remove it to make it again")
        elif loaded is not None:
            vectors = loaded
        else:
            vectors = self._from_pairs(model, layers)
        for i, v in vectors.items():
            if v.shape != (hidden,) or not np.isfinite(v).all():
                raise StrategyError(f"-S from={self.options.from_}: the vector of layer {i} has shape {list(v.shape)}"
                                    f"{'' if np.isfinite(v).all() else ' and non-finite values'}; the model's "
                                    f"hidden size is {hidden}")
        if not saved.exists():
            _write_vector(saved, vectors, {
                "format": "evalkit steer vector 1", "layers": ",".join(map(str, layers)), "hidden_size": str(hidden),
                "sha256": vector_sha256(vectors), "norms": json.dumps(vector_norms(vectors)),
                "source_kind": src["kind"], "source_sha256": src["sha256"], "source_path": str(self._path()),
                **({"pairs": str(src["pairs"])} if "pairs" in src else {})})
        return vectors

    def _from_pairs(self, model, layers: list[int]) -> dict[int, Any]:
        """mean(positive) - mean(negative) of each layer's output at the last token (float64 means)."""
        import numpy as np

        pairs = read_pairs(self._path())
        reqs, continuations = [], []
        for side in PAIR_KEYS:  # every positive text, then every negative one
            for j, pair in enumerate(pairs):
                text = pair.get("prompt", pair[side])
                reqs.append(Request(key=f"steer-{side}{j}",
                                    messages=[{"role": "user", "content": [{"type": "text", "text": text}]}]))
                continuations.append(pair[side] if "prompt" in pair else "")
        acts = np.asarray(model.last_token_activations(reqs, layers, continuations), dtype=np.float64)
        k = len(pairs)
        diff = acts[:k].mean(axis=0) - acts[k:].mean(axis=0)
        return {i: diff[j].astype(np.float32) for j, i in enumerate(layers)}

    def run_info(self, run_dir: Path) -> dict[str, Any]:
        out: dict[str, Any] = {"layers": self.options.layer_list(), "alpha": self.options.alpha,
                               "source": {**self.source(), "path": str(self._path())}}
        saved = Path(run_dir) / STEER_VECTOR
        if saved.exists():
            vectors, _ = load_vector(saved)
            out["layers"] = sorted(vectors)
            out["vector"] = {"file": STEER_VECTOR, "sha256": vector_sha256(vectors), "norms": vector_norms(vectors)}
        return out

    def plan(self, ctx: Context, done: list[dict[str, Any]]) -> list[SubCall]:
        if done:
            return []
        return [SubCall(0, dataclasses.replace(ctx.base, key=f"{ctx.presentation.key}#{self.tag}0"))]

    def final_output(self, calls):
        return calls[-1].get("output") if calls else None

    def score(self, task, rec: dict[str, Any]) -> dict[str, Any]:
        s = dict(rec["strategy"])
        sc = task.score(_plain(rec))
        s["calls"] = [{**c, "extracted": sc["extracted"], "extraction_stage": sc["extraction_stage"]}
                      for c in s["calls"]]
        return {**sc, "strategy": s}


STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (SelfConsistency, AudioPermutation, ChainOfThought, Relisten, Steer)}


def get_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """A strategy with validated options (pydantic ValidationError on a bad -S value)."""
    if name not in STRATEGIES:
        raise StrategyError(f"--strategy {name!r}: unknown; choose one of {', '.join(STRATEGIES)}")
    cls = STRATEGIES[name]
    return cls(cls.Options(**(options or {})))


def score_record(task, rec: dict[str, Any]) -> dict[str, Any]:
    """The one scoring entry point for records: the task's scorer, through the record's strategy if any."""
    s = rec.get("strategy")
    if not s:
        return task.score(rec)
    return get_strategy(s["name"], s.get("options")).score(task, rec)


# -- the sub-call log and the driver ---------------------------------------------------------------


class CallLog:
    """calls.jsonl: every finished sub-call, appended and flushed as it completes."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / CALLS
        self._out = None

    def load(self) -> dict[str, dict[str, Any]]:
        return latest_by_key(read_records(self.path, repair=True))

    def append(self, entry: dict[str, Any]) -> None:
        text = encode_record(entry)
        if self._out is None:
            self._out = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (appended to per sub-call)
        self._out.write(text)
        self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


class Driver:
    """Runs a strategy for a batch of records through the runner's streaming path: asks every
    record's next sub-calls together, logs each as it arrives, and yields one aggregate Response per
    record (its `extra["strategy"]` holds the calls). A sub-call flagged fatal makes its record's
    response fatal (nothing recorded for it; its finished sub-calls stay in the log for the resume)."""

    def __init__(self, strategy: Strategy, task, spec, run_dir: Path, presentations: dict[str, Presentation],
                 build: Callable[[Presentation], Request], stream, normalize: Callable[[Response], Response],
                 sample_rate: int | None):
        self.strategy, self.task, self.spec = strategy, task, spec
        self.log = CallLog(run_dir)
        self.presentations, self.build, self._stream, self.normalize = presentations, build, stream, normalize
        self.sample_rate = sample_rate
        self.calls = 0  # sub-calls sent in this invocation
        on_disk = self.log.load()
        self.done: dict[str, dict[int, dict[str, Any]]] = {}
        for e in on_disk.values():
            if spec.retry_errors and e.get("error") is not None:
                continue
            self.done.setdefault(e["parent"], {})[e["index"]] = e

    def stream(self, model, reqs: list[Request]) -> Iterator[Response]:
        ctxs = {r.key: Context(self.task, self.presentations[r.key], r, self.build, self.spec.seed, self.sample_rate)
                for r in reqs}
        active = list(ctxs)
        while active:
            wave: dict[str, tuple[str, SubCall]] = {}
            for key in list(active):
                done = [d for _, d in sorted(self.done.get(key, {}).items())]
                subs = self.strategy.plan(ctxs[key], done)
                if not subs:
                    active.remove(key)
                    yield self._aggregate(key, done)
                for sc in subs:
                    if sc.index in self.done.get(key, {}):  # a planning bug would otherwise loop forever
                        raise RuntimeError(f"strategy {self.strategy.name!r} asked sub-call {sc.request.key!r} again")
                    wave[sc.request.key] = (key, sc)
            if not wave:
                break
            dead: set[str] = set()
            self.calls += len(wave)
            for resp in self._stream(model, [sc.request for _, sc in wave.values()]):
                if resp.key not in wave:
                    raise RuntimeError(f"the adapter answered a request it was not asked ({resp.key!r})")
                parent, sc = wave.pop(resp.key)
                cause = (resp.extra or {}).get("fatal")
                if cause:
                    if parent not in dead:
                        dead.add(parent)
                        active.remove(parent)
                        yield Response(parent, extra={"fatal": cause})
                    continue
                resp = self.normalize(resp)
                entry = {"key": resp.key, "parent": parent, "index": sc.index, "prompt": sc.request.rendered(),
                         "output": resp.text, "error": mask_text(resp.error) if isinstance(resp.error, str) else resp.error,
                         "latency_s": resp.latency_s,
                         "extra": resp.extra or {}, **sc.fields}
                try:
                    self.log.append(entry)
                except ValueError as e:  # an unloggable reply: an error sub-call naming the field
                    entry.update(output=None, error=f"the response could not be logged: {e}", extra={})
                    self.log.append(entry)
                self.done.setdefault(parent, {})[sc.index] = entry
            for parent, sc in wave.values():  # asked, never answered
                entry = {"key": sc.request.key, "parent": parent, "index": sc.index, "prompt": sc.request.rendered(),
                         "output": None, "error": "adapter returned no response for this request",
                         "latency_s": None, "extra": {}, **sc.fields}
                self.log.append(entry)
                self.done.setdefault(parent, {})[sc.index] = entry

    def _aggregate(self, key: str, calls: list[dict[str, Any]]) -> Response:
        errors = [c for c in calls if c.get("error") is not None]
        error = None
        if errors:
            error = (f"{len(errors)} of {len(calls)} sub-calls failed (first, {errors[0]['key']}: "
                     f"{errors[0]['error']})")
        latency = sum(c.get("latency_s") or 0.0 for c in calls)
        return Response(key, text=self.strategy.final_output(calls), error=error, latency_s=round(latency, 6),
                        extra={"strategy": {**self.strategy.identity(), "calls": calls}})

    def close(self) -> None:
        self.log.close()


def run_summary(task, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """run.json `strategy` figures, from records that reached the model: sub-calls per record, and for
    voting strategies the first sub-call's single-sample metrics (same items), the mean agreement and
    the tie / no-vote counts. None when no record holds a strategy."""
    with_s = [r for r in records if r.get("strategy")]
    if not with_s:
        return None
    out: dict[str, Any] = {"records": len(with_s),
                           "calls_per_record": sum(len(r["strategy"]["calls"]) for r in with_s) / len(with_s)}
    if get_strategy(with_s[0]["strategy"]["name"], with_s[0]["strategy"].get("options")).votes:
        first = [{**_plain(r), "scores": r["strategy"]["calls"][0]["scores"],
                  "extraction_stage": r["strategy"]["calls"][0]["extraction_stage"]}
                 for r in with_s if r["strategy"]["calls"]]
        out["first_call"] = {"metrics": task.aggregate(first)["metrics"] if first else {}}
        aggs = [r["strategy"]["aggregate"] for r in with_s]
        out["agreement_mean"] = sum(a["agreement"] for a in aggs) / len(aggs)
        out["outcomes"] = dict(Counter(a["outcome"] for a in aggs))
    return out
