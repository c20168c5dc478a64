"""CED-Base audio encoder in evalkit's own PyTorch code (no torchaudio, no remote code).

Front end (16 kHz): torch.stft (n_fft 512, hann 512, hop 160, centered, reflect pad), power 2,
an HTK mel filterbank built here (64 bins, 0-8 kHz, no norm: the torchaudio
`melscale_fbanks` formula), then 10*log10(clamp(x, 1e-10)) with a 120 dB floor.

Numerics choice (documented in docs/eva.md): the top_db floor is applied **per sample**
(max over that sample's mel x time), whereas torchaudio's AmplitudeToDB on a (B, M, T) tensor
takes the max over the whole batch. Per sample keeps a clip's features independent of what it
is batched with; for a batch of one the two agree exactly.

Encoder: BatchNorm2d over the mel axis (`init_bn`), a 16x16/16 patch embedding, separable
time (1, D, 1, 63) and frequency (1, D, 4, 1) position embeddings, a pre-LN ViT. Audio up to
1,012 frames runs as one chunk of its own length (T // 16 time patches, as upstream); longer
audio is split into 1,012-frame chunks, the last one zero-padded (after the BatchNorm, as
upstream) and never dropped, even on an exact multiple. Every chunk runs on its own (chunks of
equal width are batched together), so a sample's output never depends on its batch-mates.

Output layout: for each of the requested blocks (default 4, 8, 12: indices 3, 7, 11, before
the final norm) a (B, F * T, D) tensor, frequency-major over the whole clip (index f * T + t,
t running over all chunks), zero-padded to the longest clip's T. `layout="release"` instead
concatenates whole chunks (each f * 63 + t), which is what the EvA release produces for B = 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class CEDConfig:
    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 512
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8000.0
    top_db: float | None = 120.0
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    patch_size: int = 16
    target_length: int = 1012
    ln_eps: float = 1e-6
    bn_eps: float = 1e-5
    layers: tuple[int, ...] = (3, 7, -1)

    @property
    def freq_patches(self) -> int:
        return self.n_mels // self.patch_size

    @property
    def time_patches(self) -> int:
        return self.target_length // self.patch_size

    @property
    def samples_per_token(self) -> int:
        return self.hop_length * self.patch_size  # 2560 at 16 kHz: 160 ms


# ----------------------------------------------------------------------------- front end
def hz_to_mel_htk(f):
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def mel_to_hz_htk(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def htk_mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """(n_freqs, n_mels) triangular HTK filterbank, no area normalisation (torchaudio's formula)."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    m_pts = torch.linspace(float(hz_to_mel_htk(torch.tensor(float(f_min)))),
                           float(hz_to_mel_htk(torch.tensor(float(f_max)))), n_mels + 2, dtype=torch.float64)
    f_pts = mel_to_hz_htk(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).to(torch.float32)


class MelFrontEnd(nn.Module):
    def __init__(self, cfg: CEDConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)
        self.register_buffer("fb", htk_mel_filterbank(cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels,
                                                      cfg.sample_rate), persistent=False)

    def power_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(L,) or (B, L) float waveform -> (B, n_mels, L // hop + 1) power mel."""
        c = self.cfg
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        wave = wave.float()
        if wave.shape[-1] <= c.n_fft // 2:  # reflect padding needs more samples than the pad
            wave = F.pad(wave, (0, c.n_fft // 2 + 1 - wave.shape[-1]))
        spec = torch.stft(wave, c.n_fft, hop_length=c.hop_length, win_length=c.win_length,
                          window=self.window.to(wave.device), center=True, pad_mode="reflect",
                          return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (B, n_freqs, T)
        return torch.einsum("bft,fm->bmt", power, self.fb.to(wave.device))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Log-mel in dB with a per-sample top_db floor: (B, n_mels, T)."""
        x = 10.0 * torch.log10(torch.clamp(self.power_mel(wave), min=1e-10))
        if self.cfg.top_db is not None:
            peak = x.amax(dim=(-2, -1), keepdim=True)
            x = torch.maximum(x, peak - self.cfg.top_db)
        return x


# ----------------------------------------------------------------------------- ViT
class CEDAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class CEDMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CEDBlock(nn.Module):
    def __init__(self, cfg: CEDConfig):
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.attn = CEDAttention(d, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.mlp = CEDMlp(d, int(d * cfg.mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: CEDConfig):
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x):
        return self.proj(x)


@dataclass
class CEDOutput:
    hidden_states: list[torch.Tensor]  # one (B, F * T, D) per requested block
    n_time: torch.Tensor  # (B,) time steps each sample produced (its own, as if run alone)
    valid_lengths: torch.Tensor  # (B,) waveform length // 2560, clamped to [1, n_time]
    freq_bands: int


class CEDEncoder(nn.Module):
    """CED ViT encoder; parameter names follow `mispeech/ced-base` without the `encoder.` prefix."""

    def __init__(self, cfg: CEDConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or CEDConfig()
        self.front_end = MelFrontEnd(cfg)
        self.init_bn = nn.BatchNorm2d(cfg.n_mels, eps=cfg.bn_eps, momentum=0.01)
        self.patch_embed = PatchEmbed(cfg)
        self.time_pos_embed = nn.Parameter(torch.randn(1, cfg.embed_dim, 1, cfg.time_patches) * 0.02)
        self.freq_pos_embed = nn.Parameter(torch.randn(1, cfg.embed_dim, cfg.freq_patches, 1) * 0.02)
        self.blocks = nn.Sequential(*[CEDBlock(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)

    # -- pieces
    def normalize(self, mel_db: torch.Tensor) -> torch.Tensor:
        """BatchNorm over the mel axis: (B, M, T) -> (B, M, T)."""
        return self.init_bn(mel_db.unsqueeze(2)).squeeze(2)

    def chunks(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One normalised sample (M, T) -> its chunks (M, w): one chunk of its own length up to
        target_length frames (at least one patch wide), else target_length-wide chunks with the
        last zero-padded (never dropped)."""
        L, p = self.cfg.target_length, self.cfg.patch_size
        T = x.shape[-1]
        if T <= L:
            if p > T:
                x = F.pad(x, (0, p - T))
            return [x]
        n = math.ceil(T / L)
        x = F.pad(x, (0, n * L - T))
        return list(x.split(L, dim=-1))

    def forward_chunks(self, x: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
        """(N, M, w) normalised chunks of equal width -> per layer (N, F, t, D)."""
        z = self.patch_embed(x.unsqueeze(1))  # (N, D, F, t)
        t = z.shape[-1]
        z = z + self.time_pos_embed[:, :, :, :t] + self.freq_pos_embed
        n, d, f, _ = z.shape
        h = z.flatten(2).transpose(1, 2)  # (N, F*t, D), frequency-major
        want = {(i if i >= 0 else self.cfg.depth + i): k for k, i in enumerate(layers)}
        out: list[torch.Tensor | None] = [None] * len(layers)
        last = max(want)
        for i, blk in enumerate(self.blocks):
            h = blk(h)
            if i in want:
                out[want[i]] = h.view(n, f, t, d)
            if i == last:
                break
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def forward(self, waves: list[torch.Tensor], layers: tuple[int, ...] | None = None,
                layout: str = "band_major") -> CEDOutput:
        """waves: list of 1-D 16 kHz waveforms (any lengths)."""
        layers = tuple(layers or self.cfg.layers)
        dev = self.time_pos_embed.device
        chunk_list: list[tuple[int, int, torch.Tensor]] = []  # (sample, chunk index, (M, w))
        n_chunks = []
        for b, w in enumerate(waves):
            mel = self.front_end(w.to(dev).float())  # (1, M, T)
            cs = self.chunks(self.normalize(mel)[0])
            n_chunks.append(len(cs))
            chunk_list.extend((b, s, c) for s, c in enumerate(cs))
        # run chunks grouped by width: equal widths batch together, no padding inside a chunk
        results: dict[tuple[int, int], list[torch.Tensor]] = {}
        widths = sorted({c.shape[-1] for _, _, c in chunk_list})
        for wd in widths:
            group = [(b, s, c) for b, s, c in chunk_list if c.shape[-1] == wd]
            outs = self.forward_chunks(torch.stack([c for _, _, c in group]), layers)
            for j, (b, s, _) in enumerate(group):
                results[(b, s)] = [o[j] for o in outs]  # each (F, t, D)
        B = len(waves)
        Fq, D = self.cfg.freq_patches, self.cfg.embed_dim
        per_sample = []
        for b in range(B):
            per_sample.append([torch.cat([results[(b, s)][k] for s in range(n_chunks[b])], dim=1)
                               for k in range(len(layers))])  # (F, T_b, D)
        n_time = torch.tensor([ps[0].shape[1] for ps in per_sample], dtype=torch.long)
        T = int(n_time.max())
        hidden = []
        for k in range(len(layers)):
            buf = torch.zeros(B, Fq, T, D, device=dev, dtype=per_sample[0][k].dtype)
            for b in range(B):
                if layout == "release":
                    # whole chunks concatenated, each chunk frequency-major (f * t_chunk + t)
                    x = per_sample[b][k]
                    t_c = x.shape[1] // n_chunks[b]
                    x = x.view(Fq, n_chunks[b], t_c, D).transpose(0, 1).reshape(-1, D)
                    buf.view(B, Fq * T, D)[b, : x.shape[0]] = x
                elif layout == "band_major":
                    buf[b, :, : per_sample[b][k].shape[1]] = per_sample[b][k]
                else:
                    raise ValueError(f"unknown layout {layout!r}")
            hidden.append(buf.view(B, Fq * T, D))
        lengths = torch.tensor([int(w.shape[-1]) for w in waves], dtype=torch.long)
        valid = torch.minimum(torch.clamp(lengths // self.cfg.samples_per_token, min=1), n_time)
        return CEDOutput(hidden_states=hidden, n_time=n_time, valid_lengths=valid, freq_bands=Fq)


# ----------------------------------------------------------------------------- weights
def normalize_ced_state_dict(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Accept the HF `mispeech/ced-base` layout (`encoder.*`, `outputlayer.*` ignored) or the
    original layout (no prefix, `init_bn.1.*`, `front_end.*` ignored). Nested {"model": ...}
    or {"state_dict": ...} checkpoints are unwrapped."""
    for k in ("model", "state_dict"):
        if k in sd and isinstance(sd[k], dict) and not isinstance(sd[k], torch.Tensor):
            sd = sd[k]
    out: dict[str, torch.Tensor] = {}
    for key, v in sd.items():
        if key.startswith("encoder."):
            key = key[len("encoder."):]
        if key.startswith(("outputlayer.", "front_end.")) or not isinstance(v, torch.Tensor):
            continue
        if key.startswith("init_bn.1."):
            key = "init_bn." + key[len("init_bn.1."):]
        out[key] = v
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A .safetensors file, a torch file (weights_only=True), or a folder holding either."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin")) + sorted(p.glob("*.pt"))
        if not files:
            raise FileNotFoundError(f"no .safetensors/.bin/.pt weights in {p}")
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(read_state_dict(f))
        return sd
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    return torch.load(str(p), map_location="cpu", weights_only=True)


def load_ced(path: str | Path | None, cfg: CEDConfig | None = None, device: str = "cpu") -> CEDEncoder:
    model = CEDEncoder(cfg)
    if path is not None:
        sd = normalize_ced_state_dict(read_state_dict(path))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith("front_end.") and not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(f"CED weights {path}: missing {missing[:8]}, unexpected {unexpected[:8]}")
    return model.to(device).float().eval()
