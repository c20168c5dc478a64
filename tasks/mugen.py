"""MUGEN (Yang et al., 2026, arXiv:2603.09714): multi-audio understanding MCQs over speech,
general audio and music; several clips per question, accuracy falling as their number grows.

UPSTREAM FORMAT NOT VERIFIED: no public release of MUGEN's data (repository or hub dataset)
could be found from here, so this loader reads evalkit's documented form of a multi-audio MCQ
item and nothing else; check it against the release and adapt `_sample` when it appears.
`-T data=FILE` (JSON list or JSONL), audio relative to `-T audio_root` (default: the file's
folder). One record:

    {"id": "q1", "audios": ["clips/a.wav", "clips/b.wav", "clips/c.wav"],
     "question": "Which clip has the highest pitch?", "choices": ["Audio 1", "Audio 2", "Audio 3"],
     "answer": "Audio 2", "task": "pitch comparison", "domain": "music"}

`audios` is ordered: the request carries the clips in that order, each introduced by its number
("Audio 1:", "Audio 2:", ...), then the question and options. Each clip keeps its identity for
strategies that reorder clips (audio permutation): its AudioRef label is "<id>#clip<k>:<path>"
(k = upstream position, from 1) and the sample's metadata `clips` lists the upstream paths in
upstream order, so an answer naming "Audio j" after a reordering can be mapped back.

Groupings: `n_clips` (the paper's axis), `task`, `domain`. Adapters without the `multi_audio`
capability are refused (`required_capabilities`; the runner's check_pairing must read it, see
the issue note). Each item is its own bootstrap cluster unless the record names a `group`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from evalkit.tasks.base import LoadedData, MCQTask, TaskDataError, TaskOptions, format_options, hash_files
from evalkit.tasks.loaders import get_choices, get_field, gold_index, local_audio, read_json_records, record_name
from evalkit.types import Presentation, Sample

CLIP_INTRO = "Audio {k}:"
MUGEN_PROMPT = ("{question}\n\nOptions:\n{options}\n\nThe audio clips are numbered in the order given. "
                "Answer with the letter of the correct option.")


class Mugen(MCQTask):
    name = "mugen"
    version = "1"
    description = "MUGEN: multi-audio MCQs (several clips per question); accuracy by number of clips"
    source = "-T data=FILE (evalkit's multi-audio item form; upstream release format not verified)"
    Options = TaskOptions
    groupings = ("n_clips", "task", "domain")
    prompts = {"default": MUGEN_PROMPT}
    #: the runner must refuse adapters lacking these before any work (several clips per request)
    required_capabilities: ClassVar[frozenset[str]] = frozenset({"audio", "multi_audio"})

    def load(self) -> LoadedData:
        if not self.options.data:
            raise TaskDataError("mugen: pass -T data=FILE (JSON/JSONL multi-audio items; see `evalkit.tasks.mugen`)"
                                "; no hub copy of MUGEN is known to evalkit")
        path = Path(self.options.data).expanduser()
        root = Path(self.options.audio_root).expanduser() if self.options.audio_root else path.parent
        where = str(path)
        samples, warnings, seen = [], [], set()
        for i, rec in enumerate(read_json_records(path)):
            s = _sample(rec, i, where, root, warnings)
            if s is None:
                continue
            if s.id in seen:
                raise TaskDataError(f"{where}: {record_name(rec, i)}: duplicate id {s.id!r}")
            seen.add(s.id)
            samples.append(s)
        return LoadedData(samples=samples, data_hash=hash_files([path]), warnings=warnings,
                          source={"kind": "local", "path": str(path), "audio_root": str(root)})

    def prompt(self, p: Presentation) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        for k, a in enumerate(p.sample.audio, 1):
            content.append({"type": "text", "text": CLIP_INTRO.format(k=k)})
            content.append({"type": "audio", "audio": a})
        content.append({"type": "text", "text": self.prompts[self.options.prompt].format(
            question=p.sample.question, options=format_options(p.choices))})
        return [{"role": "user", "content": content}]


def _sample(rec: Any, i: int, where: str, root: Path, warnings: list[str]) -> Sample | None:
    rid = str(get_field(rec, "id", where, i, (str, int)))
    label = record_name(rec, i)
    clips = get_field(rec, "audios", where, i, list)
    if len(clips) < 2 or not all(isinstance(c, str) and c.strip() for c in clips):
        raise TaskDataError(f"{where}: {label}: field 'audios' must list at least two audio paths "
                            f"(a one-clip item is not a multi-audio item)")
    choices = get_choices(rec, "choices", where, i)
    answer = get_field(rec, "answer", where, i, (str, int, float))
    gold = gold_index(choices, str(answer))
    if gold is None:
        warnings.append(f"{where}: {label}: answer {answer!r} is not among the choices {choices}; item skipped")
        return None
    audio = []
    for k, c in enumerate(clips, 1):
        ref = local_audio(root, c, where, label, "audios")
        ref.label = f"{rid}#clip{k}:{c}"
        audio.append(ref)
    group = rec.get("group")
    return Sample(id=rid, question=get_field(rec, "question", where, i), audio=audio, choices=choices,
                  answer=gold, group=str(group) if group is not None else rid,
                  metadata={"n_clips": len(clips), "clips": list(clips), "task": rec.get("task"),
                            "domain": rec.get("domain")})
