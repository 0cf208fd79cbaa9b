#!/usr/bin/env python3
"""Massive activations in an activation store: how many rows have a norm over
RATIO x the median, which tokens and positions they sit on, and what share of
the store's variance about the mean they hold (docs/lm.md, "Results").

Usage: python3 scripts/store_outliers.py STORE [--ratio 5] [--gguf MODEL.gguf]
Needs numpy only; reads the safetensors shards directly (f32 stores).
"""
import argparse, collections, glob, json, os, struct

import numpy as np


def gguf_tokens(path):
    """The `tokenizer.ggml.tokens` array of a GGUF file (a minimal reader)."""
    with open(path, "rb") as f:
        r = f.read
        if r(4) != b"GGUF":
            raise SystemExit(f"{path}: not a GGUF file")
        r(4)
        _, n_kv = struct.unpack("<QQ", r(16))
        sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

        def string():
            (n,) = struct.unpack("<Q", r(8))
            return r(n).decode("utf-8", "replace")

        def value(t):
            if t == 8:
                return string()
            if t == 9:
                (et,) = struct.unpack("<I", r(4))
                (n,) = struct.unpack("<Q", r(8))
                if et in (8, 9):
                    return [value(et) for _ in range(n)]
                r(sizes[et] * n)
                return None
            return r(sizes[t])

        for _ in range(n_kv):
            key = string()
            (t,) = struct.unpack("<I", r(4))
            v = value(t)
            if key == "tokenizer.ggml.tokens":
                return v
    return None


def shards(store):
    for path in sorted(glob.glob(os.path.join(store, "shard-*.safetensors"))):
        b = open(path, "rb").read()
        (hn,) = struct.unpack("<Q", b[:8])
        h = json.loads(b[8 : 8 + hn])

        def arr(name, dtype):
            s, e = h[name]["data_offsets"]
            return np.frombuffer(b[8 + hn + s : 8 + hn + e], dtype=dtype)

        if h["activations"]["dtype"] != "F32":
            raise SystemExit(f"{path}: only F32 stores are read by this script")
        x = arr("activations", np.float32).reshape(h["activations"]["shape"])
        tokens = arr("tokens", np.uint32).reshape(h["tokens"]["shape"])
        yield path, x, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--ratio", type=float, default=5.0)
    ap.add_argument("--gguf", help="model file, to print token strings")
    a = ap.parse_args()
    manifest = json.load(open(os.path.join(a.store, "manifest.json")))
    spec = manifest.get("spec", manifest)
    first = spec["first_position"]
    ctx = spec["context_len"]
    k = ctx - first

    # Pass 1: the median row norm.
    norms = np.concatenate([np.linalg.norm(x.astype(np.float64), axis=1) for _, x, _ in shards(a.store)])
    median = float(np.median(norms))
    cap = a.ratio * median
    # Pass 2: sums for the variance with and without the outliers.
    d = None
    n = nb = 0
    words, positions = collections.Counter(), collections.Counter()
    for _, x, tokens in shards(a.store):
        x = x.astype(np.float64)
        if d is None:
            d = x.shape[1]
            s, s2, bs, bs2 = (np.zeros(d) for _ in range(4))
        big = np.linalg.norm(x, axis=1) > cap
        s += x.sum(0)
        s2 += (x * x).sum(0)
        bs += x[big].sum(0)
        bs2 += (x[big] ** 2).sum(0)
        n += len(x)
        nb += int(big.sum())
        for i in np.flatnonzero(big):
            c, p = divmod(int(i), k)
            positions[first + p] += 1
            words[int(tokens[c, first + p])] += 1
    total = (s2 - s * s / n).sum()
    rest = ((s2 - bs2) - (s - bs) ** 2 / (n - nb)).sum()
    vocab = gguf_tokens(a.gguf) if a.gguf else None
    name = (lambda t: repr(vocab[t])) if vocab else str
    print(f"rows {n}; median norm {median:.1f}; max {norms.max():.0f}")
    print(f"rows with norm > {a.ratio:g} x median: {nb} ({nb / n * 1e6:.0f} per million)")
    print(f"variance about the mean per element: all rows {total / n / d:.2f}, without them {rest / (n - nb) / d:.2f}")
    print(f"share of the total variance held by them: {1 - rest / total:.3f}")
    print("positions:", dict(sorted(positions.items())))
    print("tokens:", [(name(t), c) for t, c in words.most_common(10)])


if __name__ == "__main__":
    main()
