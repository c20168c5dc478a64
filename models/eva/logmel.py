"""Whisper's 128-bin log-mel in torch, shared by the Kimi front end and the GLM-4-Voice semantic
tokenizer (n_fft 400, hop 160, hann, drop the last frame, Slaney filterbank, log10, floor at
max - 8 per chunk, (x + 4) / 4). Imports torch and transformers' filterbank only."""
from __future__ import annotations

import torch

HOP = 160


def slaney_filters(n_mels: int = 128) -> torch.Tensor:
    """(201, n_mels) Whisper filterbank (librosa Slaney), built by transformers, no download."""
    from transformers import WhisperFeatureExtractor

    return torch.from_numpy(WhisperFeatureExtractor(feature_size=n_mels).mel_filters).float()


def whisper_log_mel(chunks: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """(N, n_samples) padded 16 kHz chunks -> (N, n_mels, n_samples // 160)."""
    window = torch.hann_window(400, device=chunks.device)
    stft = torch.stft(chunks.float(), 400, HOP, window=window, return_complex=True)
    mag = stft[..., :-1].abs() ** 2
    # in fp32 even when the module was cast to bf16 as a whole (the filters are a buffer and follow .to())
    mel = torch.einsum("bft,fm->bmt", mag, filters.to(device=chunks.device, dtype=torch.float32))
    log = torch.clamp(mel, min=1e-10).log10()
    log = torch.maximum(log, log.amax(dim=(-2, -1), keepdim=True) - 8.0)
    return (log + 4.0) / 4.0
