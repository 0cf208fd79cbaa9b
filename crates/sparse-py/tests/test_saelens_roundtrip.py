"""SAELens round trip: train with the `sparse-infer` binary, export, load the
folder with plain `safetensors` + `json`, and check it against SAELens'
inference math written here in numpy and against our own encode/decode."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import sparse_infer as si

STANDARD_KEYS = {
    "architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
    "normalize_activations", "reshape_activations", "metadata",
}


def saelens_encode(cfg, t, x):
    """SAELens 6 inference (spec §2), in float64 numpy."""
    x = x.astype(np.float64)
    W_enc, b_enc, W_dec, b_dec = (t[n].astype(np.float64) for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    h = (x - b_dec * cfg.get("apply_b_dec_to_input", True)) @ W_enc + b_enc
    arch = cfg["architecture"]
    if arch == "standard":
        return np.maximum(h, 0)
    if arch == "jumprelu":
        return np.maximum(h, 0) * (h > t["threshold"].astype(np.float64))
    if arch == "topk":
        if cfg.get("rescale_acts_by_decoder_norm", False):
            h = h * np.linalg.norm(W_dec, axis=1)
        out = np.zeros_like(h)
        idx = np.argsort(-h, axis=1, kind="stable")[:, : cfg["k"]]
        rows = np.arange(len(h))[:, None]
        out[rows, idx] = np.maximum(h[rows, idx], 0)
        return out
    raise AssertionError(arch)


def saelens_decode(cfg, t, acts):
    W_dec = t["W_dec"].astype(np.float64)
    if cfg["architecture"] == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        acts = acts / np.linalg.norm(W_dec, axis=1)
    return acts @ W_dec + t["b_dec"].astype(np.float64)


@pytest.mark.parametrize(
    "method,extra,arch",
    [("topk", 'k = 3\nlr = 0.003\n', "topk"), ("sae", "lr = 0.003\n", "standard")],
)
def test_rust_trained_model_exports_a_folder_python_reads_and_reconstructs_identically(
    tmp_path, run_cli, method, extra, arch
):
    run_cli("synth", "--latents", 16, "--dim", 8, "--k", 3, "--samples", 256, "--seed", 2, "--out", tmp_path / "d")
    data = tmp_path / "d" / "data.npy"
    ckpt = tmp_path / "ckpt"
    (tmp_path / "train.toml").write_text(
        f'method = "{method}"\ndata = "{data}"\nn_latents = 16\nsteps = 200\nout = "{ckpt}"\nseed = 3\n{extra}'
    )
    run_cli("train", "--config", tmp_path / "train.toml")
    out = tmp_path / "sae"
    run_cli("export", "--model", ckpt, "--format", "saelens", "--out", out, "--hook-name", "blocks.0.hook_resid_pre")

    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    cfg = json.loads((out / "cfg.json").read_text())
    expected_keys = STANDARD_KEYS | ({"k", "rescale_acts_by_decoder_norm"} if arch == "topk" else set())
    assert set(cfg) == expected_keys
    assert cfg["architecture"] == arch and cfg["d_in"] == 8 and cfg["d_sae"] == 16
    assert cfg["dtype"] == "float32" and cfg["normalize_activations"] == "none"
    major = int(cfg["metadata"]["sae_lens_version"].split(".")[0])
    assert major >= 6
    assert cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_pre"
    t = load_file(str(out / "sae_weights.safetensors"))
    assert {n: (a.shape, a.dtype) for n, a in t.items()} == {
        "W_enc": ((8, 16), np.float32),
        "b_enc": ((16,), np.float32),
        "W_dec": ((16, 8), np.float32),
        "b_dec": ((8,), np.float32),
    }

    # Our codes (the checkpoint's own encoder) and our SAELens-side decode.
    z_ours, x_hat_ours = tmp_path / "z.npy", tmp_path / "xhat.npy"
    run_cli("encode", "--model", ckpt, "--input", data, "--out", z_ours)
    run_cli("encode", "--saelens", out, "--input", data, "--out", tmp_path / "z2.npy", "--reconstruction", x_hat_ours)
    x = np.load(data)
    acts = saelens_encode(cfg, t, x)
    assert (acts != 0).any()
    np.testing.assert_allclose(np.load(z_ours), acts, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "z2.npy"), acts, atol=1e-5)
    np.testing.assert_allclose(np.load(x_hat_ours), saelens_decode(cfg, t, acts), atol=1e-4)

    # The Python package reads the same folder to the same numbers.
    sae = si.saelens.load(out)
    for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_array_equal(sae[n], t[n])
    np.testing.assert_allclose(si.saelens.encode(sae, x), acts, atol=1e-5)
    est = si.SparseAutoencoder.from_saelens(out)
    np.testing.assert_allclose(est.transform(x), acts, atol=1e-5)
    np.testing.assert_allclose(est.inverse_transform(est.transform(x)), saelens_decode(cfg, t, acts), atol=1e-4)


@pytest.mark.parametrize("architecture", ["standard", "topk", "batchtopk", "jumprelu"])
def test_python_trained_saes_export_with_the_saelens_math(tmp_path, architecture):
    X, _, _ = si.make_sparse_data(256, 16, 8, 3, seed=0)
    k = 3 if "topk" in architecture else None
    est = si.SparseAutoencoder(16, architecture=architecture, k=k, max_iter=300, learning_rate=3e-3).fit(X)
    est.save_saelens(tmp_path / "sae", hook_name="h")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    t = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))
    want_arch = {"batchtopk": "jumprelu"}.get(architecture, architecture)
    assert cfg["architecture"] == want_arch
    assert ("threshold" in t) == (want_arch == "jumprelu")
    if architecture == "batchtopk":
        assert cfg["metadata"]["training_architecture"] == "batchtopk"
        assert np.all(t["threshold"] == t["threshold"][0])  # one threshold broadcast
    np.testing.assert_allclose(est.transform(X), saelens_encode(cfg, t, X), atol=1e-5)
    again = si.SparseAutoencoder.from_saelens(tmp_path / "sae")
    np.testing.assert_array_equal(again.transform(X), est.transform(X))


def test_foreign_folders_in_other_dtypes_load_and_bad_ones_raise(tmp_path):
    rng = np.random.default_rng(0)
    t = {
        "W_enc": rng.standard_normal((8, 16)),
        "b_enc": rng.standard_normal(16) * 0.1,
        "W_dec": rng.standard_normal((16, 8)),
        "b_dec": rng.standard_normal(8) * 0.1,
        "threshold": np.abs(rng.standard_normal(16)) * 0.5,
    }
    cfg = {"architecture": "jumprelu", "d_in": 8, "d_sae": 16, "dtype": "float64",
           "metadata": {"sae_lens_version": "6.54.12"}}
    d = tmp_path / "f64"
    d.mkdir()
    save_file(t, str(d / "sae_weights.safetensors"))
    (d / "cfg.json").write_text(json.dumps(cfg))
    sae = si.saelens.load(d)
    assert sae["W_enc"].dtype == np.float32
    x = rng.standard_normal((50, 8))
    np.testing.assert_allclose(si.saelens.encode(sae, x), saelens_encode(cfg, t, x), atol=1e-4)

    del t["threshold"]
    save_file(t, str(d / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors.*missing tensor threshold"):
        si.saelens.load(d)
    t["W_dec"] = t["W_dec"].T.copy()  # the paper code's [d_in, d_sae] orientation
    cfg["architecture"] = "standard"
    save_file(t, str(d / "sae_weights.safetensors"))
    (d / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"tensor W_dec: expected shape \[16, 8\]"):
        si.saelens.load(d)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        si.saelens.load(tmp_path / "nowhere")
