"""Benchmark: SSEU scene/event scoring of 10,000 free-text predictions with the local
MiniLM embedder, cold embedding cache vs warm cache.

    python bench/bench_sseu_scoring.py [--n 10000] [--embedder minilm]

Half the predictions are scene answers, half event lists (1-3 events each); the texts
are varied paraphrases (about 3,000 distinct strings to embed once split into events). "cold"
starts from an empty cache file (model already loaded, load time printed separately);
"warm" repeats the same scoring with a fresh embedder on the same cache file.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCENES = ["home", "cafe_restaurant", "city_center", "grocery_store", "metro_station", "residential_area"]
EVENTS = ["Alarm_bell_ringing", "Blender", "Cat", "Dishes", "Dog", "Electric_shaver_toothbrush", "Frying",
          "Running_water", "Vacuum_cleaner", "birds_singing", "brakes_squeaking", "car", "cutlery and dishes",
          "footsteps", "large_vehicle", "metro approaching", "metro leaving", "wind_blowing"]
SCENE_PHRASES = ["{s}", "it sounds like a {s}", "probably a {s}", "the background is a {s}", "a busy {s}",
                 "a quiet {s}", "I think this is a {s} at {h} o'clock", "recorded in a {s}, take {i}",
                 "somewhere like a {s} or nearby ({i})"]
EVENT_PHRASES = ["{e}", "a {e}", "some {e} sounds", "{e} in the distance", "loud {e}", "{e} #{i}",
                 "faint {e} around {h} seconds"]


def make_predictions(n: int, seed: int = 0):
    rnd = random.Random(seed)
    h = lambda x: x.replace("_", " ").lower()
    scenes, events, y_scene, y_events = [], [], [], []
    for i in range(n // 2):
        s = rnd.randrange(len(SCENES))
        y_scene.append(s)
        scenes.append(rnd.choice(SCENE_PHRASES).format(s=h(SCENES[s]), h=rnd.randrange(24), i=i))
    for i in range(n - n // 2):
        ks = rnd.sample(range(len(EVENTS)), rnd.randint(1, 3))
        y_events.append(ks)
        events.append(", ".join(rnd.choice(EVENT_PHRASES).format(e=h(EVENTS[k]), h=rnd.randrange(10), i=i)
                                for k in ks))
    return scenes, events, y_scene, y_events


def score(scenes, events, y_scene, y_events, embedder):
    import numpy as np

    from evalkit.tasks.sseu import scoring as S

    conf = S.scene_confidences(scenes, SCENES, embedder)
    macc = S.macc_metric(y_scene, conf.argmax(axis=1), [str(i) for i in range(len(scenes))])
    lists = [S.parse_event_list(t) for t in events]
    sc = S.event_scores(lists, EVENTS, embedder)
    Y = np.zeros_like(sc)
    for i, ks in enumerate(y_events):
        Y[i, ks] = 1
    mAP = S.map_metric(Y, sc, [str(i) for i in range(len(events))])
    return macc, mAP


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--embedder", default="minilm")
    args = ap.parse_args()
    from evalkit.text_embedders import EmbeddingCache, get_embedder

    scenes, events, y_scene, y_events = make_predictions(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EVALKIT_CACHE_DIR"] = tmp
        cache_file = Path(tmp) / "embeddings.sqlite"
        t = time.perf_counter()
        warmup = get_embedder(args.embedder, cache=False)
        warmup.embed(["warm up"])
        load_s = time.perf_counter() - t

        cold = get_embedder(args.embedder, cache=EmbeddingCache(cache_file))
        t = time.perf_counter()
        macc1, map1 = score(scenes, events, y_scene, y_events, cold)
        cold_s = time.perf_counter() - t

        warm = get_embedder(args.embedder, cache=EmbeddingCache(cache_file))
        t = time.perf_counter()
        macc2, map2 = score(scenes, events, y_scene, y_events, warm)
        warm_s = time.perf_counter() - t

    assert macc1["value"] == macc2["value"] and map1["value"] == map2["value"]
    assert warm.calls == 0, "warm run called the model"
    print(f"predictions: {args.n} ({len(scenes)} scene answers, {len(events)} event lists); "
          f"embedder {cold.id}; texts embedded cold: {cold.encoded}, warm: {warm.encoded}")
    print(f"model load (not in the timings): {load_s:.2f} s")
    print(f"cold cache: {cold_s:.2f} s   ({args.n / cold_s:,.0f} predictions/s)")
    print(f"warm cache: {warm_s:.2f} s   ({args.n / warm_s:,.0f} predictions/s)")
    print(f"speed-up:   {cold_s / warm_s:.1f}x")
    print(f"mACC {macc1['value']:.2f} (CI {macc1['ci']}), mAP {map1['value']:.2f} (CI {map1['ci']})")


if __name__ == "__main__":
    main()
