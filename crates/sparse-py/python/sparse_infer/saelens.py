"""SAELens folders (``cfg.json`` + ``sae_weights.safetensors``), read and written
by the Rust core with SAELens' own strictness, plus SAELens' inference math.

A model is a plain dict (see :func:`load`): ``W_enc (d_in, d_sae)``,
``b_enc (d_sae,)``, ``W_dec (d_sae, d_in)``, ``b_dec (d_in,)``,
``architecture`` (``standard``, ``topk`` with ``k``, ``jumprelu`` with
``threshold (d_sae,)``), ``apply_b_dec_to_input``, ``normalize_activations``
and ``metadata`` (a dict: ``hook_name``, ``training_architecture``...).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Union

import numpy as np
import numpy.typing as npt

from . import _native

__all__ = ["load", "save", "encode", "decode"]

SaeDict = Dict[str, Any]


def load(path: Union[str, "os.PathLike[str]"]) -> SaeDict:
    """Reads a SAELens folder. Raises ``ValueError`` naming the file for a
    missing or extra tensor, a wrong shape, an unsupported architecture or
    normalisation, and ``OSError`` for a missing file. Tensors in float64,
    float16 or bfloat16 are converted to float32."""
    d = dict(_native.load_saelens(os.fspath(path)))
    d["metadata"] = json.loads(d.pop("metadata_json"))
    return d


def save(path: Union[str, "os.PathLike[str]"], sae: SaeDict, *, hook_name: Optional[str] = None) -> None:
    """Writes ``sae`` (the layout of :func:`load`) as a SAELens folder that
    ``sae_lens.SAE.load_from_disk`` loads (float32, ``metadata.sae_lens_version``
    "6.0.0" unless the dict's metadata carries a version >= 6)."""
    metadata = dict(sae.get("metadata") or {})
    if hook_name is not None:
        metadata["hook_name"] = hook_name
    _native.save_saelens(
        os.fspath(path),
        sae["W_enc"],
        sae["b_enc"],
        sae["W_dec"],
        sae["b_dec"],
        sae["architecture"],
        k=sae.get("k"),
        threshold=sae.get("threshold"),
        apply_b_dec_to_input=bool(sae.get("apply_b_dec_to_input", True)),
        rescale_acts_by_decoder_norm=bool(sae.get("rescale_acts_by_decoder_norm", False)),
        normalize_activations=sae.get("normalize_activations", "none"),
        metadata_json=json.dumps(metadata),
    )


def encode(sae: SaeDict, x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """SAELens' ``encode``: ``h = (x - b_dec*apply_b_dec_to_input) @ W_enc + b_enc``,
    then ``relu`` (standard), ``relu(h)*(h > threshold)`` (jumprelu) or ReLU of
    the ``k`` largest (topk)."""
    return _native.sae_encode(
        x,
        sae["W_enc"],
        sae["b_enc"],
        sae["W_dec"],
        sae["b_dec"],
        sae["architecture"],
        k=sae.get("k"),
        threshold=sae.get("threshold"),
        apply_b_dec_to_input=bool(sae.get("apply_b_dec_to_input", True)),
        rescale_acts_by_decoder_norm=bool(sae.get("rescale_acts_by_decoder_norm", False)),
    )


def decode(sae: SaeDict, acts: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """SAELens' ``decode``: ``acts @ W_dec + b_dec`` (topk with
    ``rescale_acts_by_decoder_norm``: acts divided by the W_dec row norms first)."""
    a = np.asarray(acts, dtype=np.float32)
    w_dec = np.asarray(sae["W_dec"], dtype=np.float32)
    if a.ndim != 2 or a.shape[1] != w_dec.shape[0]:
        raise ValueError(f"feature activations: expected shape (n, {w_dec.shape[0]}), found {a.shape}")
    if sae["architecture"] == "topk" and sae.get("rescale_acts_by_decoder_norm"):
        a = a / np.linalg.norm(w_dec, axis=1)
    return (a @ w_dec + np.asarray(sae["b_dec"], dtype=np.float32)).astype(np.float32)
