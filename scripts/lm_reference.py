#!/usr/bin/env python3
"""Independent numpy reference of a Llama-architecture GGUF forward pass.

Used by sparse-lm's tests to check the Rust (candle) implementation. It shares
no code with it: weights come from the `gguf` package's GGUFReader and
gguf.quants.dequantize, and the forward pass is written from scratch in float64
in the Hugging Face convention. In particular the Q and K weights, which
llama.cpp's converter stores permuted so that rotary embedding rotates adjacent
pairs of dimensions, are permuted back to HF's layout here and rotated with
HF's rotate-half; agreement therefore also checks the Rust side's handling of
that convention.

Usage:
    lm_reference.py GGUF TOKENS OUT_DIR HOOK [HOOK ...] [--nll]

TOKENS is a text file with one sequence per line (whitespace-separated token
ids, every line the same length). For each hook (TransformerLens names:
blocks.L.hook_resid_pre|hook_resid_post|hook_attn_out|hook_mlp_out) it writes
OUT_DIR/<hook>.npy, float32 of shape (batch*seq, d_model), row b*seq + t being
position t of sequence b. With --nll it also writes OUT_DIR/nll.npy, the
next-token negative log-likelihoods, shape (batch*(seq-1),).
"""

import argparse
import os
import re
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_post|attn_out|mlp_out)$")


class Model:
    def __init__(self, path):
        self.reader = GGUFReader(path)
        self.tensors = {t.name: t for t in self.reader.tensors}
        arch = self.field("general.architecture")
        if arch != "llama":
            sys.exit(f"{path}: architecture {arch!r}, expected 'llama'")
        self.n_layers = int(self.field("llama.block_count"))
        self.d = int(self.field("llama.embedding_length"))
        self.n_heads = int(self.field("llama.attention.head_count"))
        self.n_kv = int(self.field("llama.attention.head_count_kv"))
        self.hd = self.d // self.n_heads
        self.eps = float(self.field("llama.attention.layer_norm_rms_epsilon", 1e-5))
        self.base = float(self.field("llama.rope.freq_base", 10000.0))
        self.cache = {}

    def field(self, name, default=None):
        f = self.reader.fields.get(name)
        return default if f is None else f.contents()

    def weight(self, name):
        """Dequantised float64 weight in numpy order (GGUF dims reversed)."""
        if name not in self.cache:
            t = self.tensors[name]
            shape = tuple(int(x) for x in reversed(t.shape.tolist()))
            w = dequantize(t.data, t.tensor_type)
            self.cache[name] = np.asarray(w, dtype=np.float64).reshape(shape)
        return self.cache[name]

    def unpermute(self, w, n_heads):
        """Undo llama.cpp's Q/K permutation: GGUF row (h, i, j) of (heads, hd/2, 2)
        is HF row (h, j, i) of (heads, 2, hd/2)."""
        rows, cols = w.shape
        return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x):
        """HF rotate-half RoPE on (batch, heads, seq, hd)."""
        seq = x.shape[2]
        inv = self.base ** (-np.arange(0, self.hd, 2, dtype=np.float64) / self.hd)
        ang = np.arange(seq, dtype=np.float64)[:, None] * inv[None, :]
        cos = np.concatenate([np.cos(ang)] * 2, axis=-1)
        sin = np.concatenate([np.sin(ang)] * 2, axis=-1)
        half = self.hd // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rot * sin

    def attention(self, l, x):
        b, t, _ = x.shape
        p = f"blk.{l}"
        wq = self.unpermute(self.weight(f"{p}.attn_q.weight"), self.n_heads)
        wk = self.unpermute(self.weight(f"{p}.attn_k.weight"), self.n_kv)
        wv = self.weight(f"{p}.attn_v.weight")
        wo = self.weight(f"{p}.attn_output.weight")
        q = (x @ wq.T).reshape(b, t, self.n_heads, self.hd).transpose(0, 2, 1, 3)
        k = (x @ wk.T).reshape(b, t, self.n_kv, self.hd).transpose(0, 2, 1, 3)
        v = (x @ wv.T).reshape(b, t, self.n_kv, self.hd).transpose(0, 2, 1, 3)
        q, k = self.rope(q), self.rope(k)
        rep = self.n_heads // self.n_kv
        k = np.repeat(k, rep, axis=1)  # query head h reads KV head h // rep
        v = np.repeat(v, rep, axis=1)
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(self.hd)
        s = np.where(np.triu(np.ones((t, t), dtype=bool), 1), -np.inf, s)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        y = (s @ v).transpose(0, 2, 1, 3).reshape(b, t, self.n_heads * self.hd)
        return y @ wo.T

    def mlp(self, l, x):
        p = f"blk.{l}"
        g = x @ self.weight(f"{p}.ffn_gate.weight").T
        u = x @ self.weight(f"{p}.ffn_up.weight").T
        return (g / (1.0 + np.exp(-g)) * u) @ self.weight(f"{p}.ffn_down.weight").T

    def run(self, tokens, hooks, want_nll):
        """tokens: (batch, seq) ints. Returns {hook: (batch*seq, d)} and nll or None."""
        b, t = tokens.shape
        want = {}
        for name in hooks:
            m = HOOK_RE.match(name)
            if not m:
                sys.exit(f"bad hook name {name!r}")
            want[(int(m.group(1)), m.group(2))] = name
        depth = self.n_layers if want_nll else max(
            [(l if kind == "resid_pre" else l + 1) for l, kind in want], default=0)
        out = {}

        def save(l, kind, x):
            if (l, kind) in want:
                out[want[(l, kind)]] = x.reshape(b * t, self.d).astype(np.float32)

        h = self.weight("token_embd.weight")[tokens]
        for l in range(depth):
            save(l, "resid_pre", h)
            a = self.attention(l, self.rms(h, self.weight(f"blk.{l}.attn_norm.weight")))
            save(l, "attn_out", a)
            mid = h + a
            m = self.mlp(l, self.rms(mid, self.weight(f"blk.{l}.ffn_norm.weight")))
            save(l, "mlp_out", m)
            h = mid + m
            save(l, "resid_post", h)
        if depth < self.n_layers:
            save(depth, "resid_pre", h)
        nll = None
        if want_nll:
            x = self.rms(h, self.weight("output_norm.weight"))
            head = "output.weight" if "output.weight" in self.tensors else "token_embd.weight"
            logits = x[:, :-1] @ self.weight(head).T  # (b, t-1, vocab)
            mx = logits.max(axis=-1, keepdims=True)
            lse = (mx + np.log(np.exp(logits - mx).sum(axis=-1, keepdims=True)))[..., 0]
            target = np.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0]
            nll = (lse - target).reshape(-1)
        missing = set(want.values()) - set(out)
        if missing:
            sys.exit(f"hooks not reached: {sorted(missing)}")
        return out, nll


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("tokens")
    ap.add_argument("out_dir")
    ap.add_argument("hooks", nargs="*")
    ap.add_argument("--nll", action="store_true")
    args = ap.parse_args()
    with open(args.tokens) as f:
        rows = [[int(x) for x in line.split()] for line in f if line.strip()]
    if not rows or len({len(r) for r in rows}) != 1:
        sys.exit(f"{args.tokens}: expected lines of equal length")
    tokens = np.array(rows, dtype=np.int64)
    model = Model(args.gguf)
    out, nll = model.run(tokens, args.hooks, args.nll)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, x in out.items():
        np.save(os.path.join(args.out_dir, f"{name}.npy"), x)
    if nll is not None:
        np.save(os.path.join(args.out_dir, "nll.npy"), nll.astype(np.float32))


if __name__ == "__main__":
    main()
