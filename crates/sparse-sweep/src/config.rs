//! The sweep file (TOML) and its expansion into runs.
//!
//! A sweep is one or more `[[data]]` grids (the Cartesian product of their
//! axes; several blocks make a list) crossed with every `[[method]]` block
//! (itself the product of its hyperparameter axes). Every axis is an array,
//! even with one value. Unknown fields are errors.
//!
//! ```toml
//! name = "example"
//! eval_points = 12
//!
//! [[data]]
//! n_latents = [16, 32]
//! dim = [8]
//! k = [3]
//! samples = [1024]        # train = validation = test size
//! noise_std = [0.0]
//! seeds = [20240927, 20240928]
//! dictionary = ["learned"] # "known" (true D frozen) or "learned"
//!
//! [[method]]
//! kind = "sae"            # sae | mlp | topk | sparse-coding
//! lambda = [0.01]
//! lr = [1e-3]
//! steps = [5000]
//! ```
//!
//! A `[[data]]` block with `preset` draws its cells from a realistic
//! (SynthSAEBench-style) generator of [`sparse_core::realistic_data`] instead
//! of the paper's: `n_latents`, `dim` and `noise_std` then override the
//! preset's own values (absent: the preset's), `seeds` its seed, and `k`
//! (required) is the sparsity the models target (TopK's k), since realistic
//! codes have no fixed K. The data are divided by one scalar so that the
//! training split's mean squared coordinate is 1, as in `reproduce
//! synthetic-realism`; a preset's OOD test split is not used.
//!
//! ```toml
//! [[data]]
//! preset = ["synthsaebench-laptop"]
//! n_latents = [256, 512]   # overrides; the hierarchy is truncated to fit
//! dim = [32]
//! k = [4]
//! samples = [2048]
//! seeds = [42]
//! ```

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sparse_core::data::{Split, SyntheticData};
use sparse_core::realistic_data::{RealisticConfig, RealisticModel};
use std::path::Path;

/// Whether a run gets the true dictionary or learns its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DictionarySetting {
    /// The true dictionary, frozen: only inference differs (the known-dictionary study).
    Known,
    /// Each method learns its dictionary (the learned-dictionary study, the paper's scaling grid).
    Learned,
}

impl DictionarySetting {
    /// `"known"` or `"learned"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DictionarySetting::Known => "known",
            DictionarySetting::Learned => "learned",
        }
    }
}

/// The method families a sweep can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MethodKind {
    /// Linear-ReLU SAE with the paper's L1 loss.
    Sae,
    /// MLP encoder (`width` hidden units) with the paper's L1 loss.
    Mlp,
    /// TopK SAE (learned dictionary only).
    Topk,
    /// Sparse coding: FISTA with the true dictionary (known), or alternating
    /// FISTA + MOD dictionary updates (learned).
    SparseCoding,
}

impl MethodKind {
    /// The name used in configs, the store and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Sae => "sae",
            MethodKind::Mlp => "mlp",
            MethodKind::Topk => "topk",
            MethodKind::SparseCoding => "sparse-coding",
        }
    }
}

/// A whole sweep file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// Name recorded with every run.
    pub name: String,
    /// Free text for the report.
    #[serde(default)]
    pub description: String,
    /// Log-spaced validation evaluations per run (model selection and the metric curve).
    #[serde(default = "default_eval_points")]
    pub eval_points: usize,
    /// Data grids; their expansions are concatenated.
    pub data: Vec<DataGrid>,
    /// Method grids, each crossed with every data cell.
    pub method: Vec<MethodGrid>,
}

fn default_eval_points() -> usize {
    12
}

/// One `[[data]]` block: the Cartesian product of its axes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataGrid {
    /// Realistic presets ([`sparse_core::realistic_data::PRESETS`]); absent:
    /// the paper's generator. With presets, `n_latents`, `dim` and
    /// `noise_std` override the preset's values and may be left out.
    #[serde(default)]
    pub preset: Option<Vec<String>>,
    /// Numbers of true features `N` (required without `preset`).
    #[serde(default)]
    pub n_latents: Option<Vec<usize>>,
    /// Observed dimensions `M` (required without `preset`).
    #[serde(default)]
    pub dim: Option<Vec<usize>>,
    /// Active features per sample `K`.
    pub k: Vec<usize>,
    /// Samples per split (train = validation = test).
    #[serde(default = "default_samples")]
    pub samples: Vec<usize>,
    /// Standard deviations of additive Gaussian noise on `X` (default 0, or
    /// the preset's own with `preset`).
    #[serde(default)]
    pub noise_std: Option<Vec<f64>>,
    /// Data seeds (model seed = data seed + 42).
    pub seeds: Vec<u64>,
    /// Known and/or learned dictionary.
    #[serde(default = "default_dictionary")]
    pub dictionary: Vec<DictionarySetting>,
}

fn default_samples() -> Vec<usize> {
    vec![1024]
}
fn default_dictionary() -> Vec<DictionarySetting> {
    vec![DictionarySetting::Learned]
}

/// One `[[method]]` block: a family and its hyperparameter axes. An axis the
/// family does not use is an error; a missing one takes the default.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodGrid {
    /// The family.
    pub kind: MethodKind,
    /// λ: the L1 weight of the paper's loss (sae, mlp; default 0.01) or the
    /// lasso λ of sparse coding (default 0.03).
    pub lambda: Option<Vec<f64>>,
    /// Adam learning rates (sae, mlp, topk; default 1e-3).
    pub lr: Option<Vec<f64>>,
    /// Full-batch training steps (sae, mlp, topk) or alternating steps of
    /// learned-dictionary sparse coding. Required for those.
    pub steps: Option<Vec<usize>>,
    /// MLP hidden widths (mlp only; required).
    pub width: Option<Vec<usize>>,
    /// TopK k (topk only; default: the data's K).
    pub k: Option<Vec<usize>>,
    /// Whether the encoder has biases (sae, mlp; default false).
    pub bias: Option<Vec<bool>>,
    /// FISTA iterations: per alternating step (learned) or the cap (known); default 50 / 1000.
    pub fista_iters: Option<Vec<usize>>,
}

/// One fully resolved data cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    /// Known or learned dictionary.
    pub dictionary: DictionarySetting,
    /// `N`.
    pub n_latents: usize,
    /// `M`.
    pub dim: usize,
    /// `K`.
    pub k: usize,
    /// Samples per split.
    pub samples: usize,
    /// Noise standard deviation.
    pub noise_std: f64,
    /// Data seed.
    pub seed: u64,
    /// Realistic preset the cell is drawn from (`None`: the paper's
    /// generator). Left out of the canonical JSON when absent, so the run
    /// keys of paper-generator cells are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
}

/// One fully resolved method: exactly the hyperparameters the run uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum MethodSpec {
    /// Linear-ReLU SAE.
    Sae {
        /// L1 weight.
        lambda: f64,
        /// Adam learning rate.
        lr: f64,
        /// Training steps.
        steps: usize,
        /// Encoder bias.
        bias: bool,
    },
    /// MLP encoder.
    Mlp {
        /// Hidden width.
        width: usize,
        /// L1 weight.
        lambda: f64,
        /// Adam learning rate.
        lr: f64,
        /// Training steps.
        steps: usize,
        /// Biases.
        bias: bool,
    },
    /// TopK SAE.
    Topk {
        /// Active latents kept.
        k: usize,
        /// Adam learning rate.
        lr: f64,
        /// Training steps.
        steps: usize,
    },
    /// Sparse coding.
    SparseCoding {
        /// Lasso λ.
        lambda: f64,
        /// Alternating steps (learned dictionary only).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        steps: Option<usize>,
        /// FISTA iterations per step (learned) or iteration cap (known).
        fista_iters: usize,
    },
}

impl MethodSpec {
    /// The family.
    pub fn kind(&self) -> MethodKind {
        match self {
            MethodSpec::Sae { .. } => MethodKind::Sae,
            MethodSpec::Mlp { .. } => MethodKind::Mlp,
            MethodSpec::Topk { .. } => MethodKind::Topk,
            MethodSpec::SparseCoding { .. } => MethodKind::SparseCoding,
        }
    }
}

/// One run: a data cell, a method and the evaluation schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// The data.
    pub data: DataSpec,
    /// The method.
    pub method: MethodSpec,
    /// Validation evaluations along training.
    pub eval_points: usize,
}

/// Bumped whenever what a run computes for the same spec changes, so that old
/// results are not mistaken for new ones.
const RUN_KEY_VERSION: &str = "sparse-sweep run v1";

impl RunSpec {
    /// The canonical JSON of the spec (field order fixed by the types).
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("a run spec always serialises")
    }

    /// The stable run key: SHA-256 (hex) of the canonical JSON of the fully
    /// resolved spec, seed included. Equal specs give equal keys on every machine.
    pub fn key(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(RUN_KEY_VERSION.as_bytes());
        hasher.update([0]);
        hasher.update(self.canonical_json().as_bytes());
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl SweepConfig {
    /// Reads and checks a sweep file; errors name the file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading sweep config {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("{}: invalid sweep config", path.display()))
    }

    /// Parses and checks a sweep from TOML text.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let config: SweepConfig = toml::from_str(text)?;
        config.expand()?;
        Ok(config)
    }

    /// Every run of the sweep, sorted by run key (the order shards slice),
    /// without duplicates. Errors on empty axes, invalid cells and
    /// hyperparameters a family does not use.
    pub fn expand(&self) -> anyhow::Result<Vec<RunSpec>> {
        anyhow::ensure!(self.eval_points >= 2, "eval_points must be at least 2");
        anyhow::ensure!(!self.data.is_empty(), "no [[data]] block");
        anyhow::ensure!(!self.method.is_empty(), "no [[method]] block");
        let mut cells = Vec::new();
        for (i, grid) in self.data.iter().enumerate() {
            cells.extend(
                grid.cells()
                    .with_context(|| format!("[[data]] block {}", i + 1))?,
            );
        }
        let mut runs = Vec::new();
        for (i, grid) in self.method.iter().enumerate() {
            let what = || format!("[[method]] block {} ({})", i + 1, grid.kind.as_str());
            grid.check_axes().with_context(what)?;
            for cell in &cells {
                for method in grid.methods(cell).with_context(what)? {
                    runs.push(RunSpec {
                        data: cell.clone(),
                        method,
                        eval_points: self.eval_points,
                    });
                }
            }
        }
        let mut keyed: Vec<(String, RunSpec)> = runs.into_iter().map(|r| (r.key(), r)).collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        keyed.dedup_by(|a, b| a.0 == b.0);
        anyhow::ensure!(
            !keyed.is_empty(),
            "the grid expands to no runs (topk runs only with a learned dictionary)"
        );
        Ok(keyed.into_iter().map(|(_, r)| r).collect())
    }
}

/// Fails on an empty axis.
fn axis<'a, T>(name: &str, values: &'a [T]) -> anyhow::Result<&'a [T]> {
    if values.is_empty() {
        bail!("axis `{name}` is empty");
    }
    Ok(values)
}

impl DataGrid {
    fn cells(&self) -> anyhow::Result<Vec<DataSpec>> {
        let presets: Vec<Option<String>> = match &self.preset {
            None => vec![None],
            Some(p) => axis("preset", p)?.iter().cloned().map(Some).collect(),
        };
        let mut cells = Vec::new();
        for &dictionary in axis("dictionary", &self.dictionary)? {
            for preset in &presets {
                let base = match preset {
                    Some(name) => Some(RealisticConfig::preset(name)?),
                    None => None,
                };
                // An absent axis takes the preset's value; without a preset it is required.
                let own = |name: &str,
                           axis_values: &Option<Vec<usize>>,
                           of: fn(&RealisticConfig) -> usize|
                 -> anyhow::Result<Vec<usize>> {
                    match (axis_values, &base) {
                        (Some(v), _) => Ok(axis(name, v)?.to_vec()),
                        (None, Some(b)) => Ok(vec![of(b)]),
                        (None, None) => bail!("`{name}` is required (or give a `preset`)"),
                    }
                };
                let noise = match (&self.noise_std, &base) {
                    (Some(v), _) => axis("noise_std", v)?.to_vec(),
                    (None, Some(b)) => vec![b.noise_std as f64],
                    (None, None) => vec![0.0],
                };
                for n_latents in own("n_latents", &self.n_latents, |b| b.n_latents)? {
                    for dim in own("dim", &self.dim, |b| b.dim)? {
                        for &k in axis("k", &self.k)? {
                            for &samples in axis("samples", &self.samples)? {
                                for &noise_std in &noise {
                                    for &seed in axis("seeds", &self.seeds)? {
                                        let cell = DataSpec {
                                            dictionary,
                                            n_latents,
                                            dim,
                                            k,
                                            samples,
                                            noise_std,
                                            seed,
                                            preset: preset.clone(),
                                        };
                                        cell.check().with_context(|| {
                                            format!(
                                                "cell {}N={n_latents}, M={dim}, K={k}, noise {noise_std}",
                                                preset.as_ref().map_or(String::new(), |p| format!("{p} "))
                                            )
                                        })?;
                                        anyhow::ensure!(
                                            samples >= 2,
                                            "samples = {samples}: every split needs at least 2"
                                        );
                                        anyhow::ensure!(
                                            seed <= i64::MAX as u64,
                                            "seed {seed} is too large (at most {})",
                                            i64::MAX
                                        );
                                        cells.push(cell);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(cells)
    }
}

impl DataSpec {
    /// The paper generator's configuration of this cell (also for a preset
    /// cell, where only its sizes, K, noise and seed mean anything).
    pub fn synthetic_config(&self) -> sparse_core::data::SyntheticConfig {
        let mut c =
            sparse_core::data::SyntheticConfig::paper(self.n_latents, self.dim, self.k, self.seed);
        c.noise_std = self.noise_std as f32;
        c
    }

    /// The realistic generator's configuration of a preset cell (its sizes,
    /// noise and seed overriding the preset's); `None` for a paper cell.
    pub fn realistic_config(&self) -> anyhow::Result<Option<RealisticConfig>> {
        let Some(name) = &self.preset else {
            return Ok(None);
        };
        let mut c = RealisticConfig::preset(name)?;
        c.n_latents = self.n_latents;
        c.dim = self.dim;
        c.noise_std = self.noise_std as f32;
        c.seed = self.seed;
        Ok(Some(c))
    }

    /// Checks the cell: the generator's configuration, and `1 ≤ K ≤ N`.
    fn check(&self) -> anyhow::Result<()> {
        match self.realistic_config()? {
            Some(c) => {
                c.validate()?;
                anyhow::ensure!(
                    self.k >= 1 && self.k <= self.n_latents,
                    "k = {} must be between 1 and N = {}",
                    self.k,
                    self.n_latents
                );
            }
            None => self.synthetic_config().validate()?,
        }
        Ok(())
    }

    /// Train, validation and test splits of `samples` each. A preset cell's
    /// data are divided by one scalar so that the training split's mean
    /// squared coordinate is 1 (codes too, so `X = Z·D` still holds).
    pub fn generate(&self) -> anyhow::Result<SyntheticData> {
        let s = self.samples;
        let Some(config) = self.realistic_config()? else {
            return Ok(self.synthetic_config().generate(s, s, s)?);
        };
        let data = RealisticModel::new(&config)?.generate(s, s, s)?;
        let x = data.train.x.as_slice();
        let scale =
            ((data.train.x.norm_sq() / x.len() as f64).sqrt() as f32).max(f32::MIN_POSITIVE);
        let scaled = |mut split: Split| {
            split.x.as_mut_slice().iter_mut().for_each(|v| *v /= scale);
            split.z.as_mut_slice().iter_mut().for_each(|v| *v /= scale);
            split
        };
        Ok(SyntheticData {
            dictionary: data.dictionary,
            train: scaled(data.train),
            val: scaled(data.val),
            test: scaled(data.test),
        })
    }
}

/// The values of an optional axis, or `default`.
fn or_default<T: Clone>(name: &str, values: &Option<Vec<T>>, default: T) -> anyhow::Result<Vec<T>> {
    match values {
        Some(v) => Ok(axis(name, v)?.to_vec()),
        None => Ok(vec![default]),
    }
}

fn required<T: Clone>(name: &str, values: &Option<Vec<T>>) -> anyhow::Result<Vec<T>> {
    match values {
        Some(v) => Ok(axis(name, v)?.to_vec()),
        None => bail!("`{name}` is required"),
    }
}

impl MethodGrid {
    /// Rejects axes the family does not use, and out-of-range values.
    fn check_axes(&self) -> anyhow::Result<()> {
        let used: &[&str] = match self.kind {
            MethodKind::Sae => &["lambda", "lr", "steps", "bias"],
            MethodKind::Mlp => &["lambda", "lr", "steps", "bias", "width"],
            MethodKind::Topk => &["lr", "steps", "k"],
            MethodKind::SparseCoding => &["lambda", "steps", "fista_iters"],
        };
        let given = [
            ("lambda", self.lambda.is_some()),
            ("lr", self.lr.is_some()),
            ("steps", self.steps.is_some()),
            ("width", self.width.is_some()),
            ("k", self.k.is_some()),
            ("bias", self.bias.is_some()),
            ("fista_iters", self.fista_iters.is_some()),
        ];
        for (name, present) in given {
            if present && !used.contains(&name) {
                bail!(
                    "`{name}` does not apply to {} (it takes {})",
                    self.kind.as_str(),
                    used.join(", ")
                );
            }
        }
        let positive = |name: &str, v: &Option<Vec<f64>>| -> anyhow::Result<()> {
            for &x in v.iter().flatten() {
                anyhow::ensure!(x.is_finite() && x > 0.0, "`{name}` = {x}: must be positive");
            }
            Ok(())
        };
        positive("lambda", &self.lambda)?;
        positive("lr", &self.lr)?;
        for (name, v) in [
            ("steps", &self.steps),
            ("width", &self.width),
            ("k", &self.k),
            ("fista_iters", &self.fista_iters),
        ] {
            if v.iter().flatten().any(|&x| x == 0) {
                bail!("`{name}` must be at least 1");
            }
        }
        Ok(())
    }

    /// The resolved methods for one data cell (none for topk with a known dictionary).
    fn methods(&self, cell: &DataSpec) -> anyhow::Result<Vec<MethodSpec>> {
        let known = cell.dictionary == DictionarySetting::Known;
        let mut out = Vec::new();
        match self.kind {
            MethodKind::Sae | MethodKind::Mlp => {
                let widths = if self.kind == MethodKind::Mlp {
                    required("width", &self.width)?
                } else {
                    vec![0]
                };
                for &width in &widths {
                    for &lambda in &or_default("lambda", &self.lambda, 0.01)? {
                        for &lr in &or_default("lr", &self.lr, 1e-3)? {
                            for &steps in &required("steps", &self.steps)? {
                                for &bias in &or_default("bias", &self.bias, false)? {
                                    out.push(match self.kind {
                                        MethodKind::Sae => MethodSpec::Sae {
                                            lambda,
                                            lr,
                                            steps,
                                            bias,
                                        },
                                        _ => MethodSpec::Mlp {
                                            width,
                                            lambda,
                                            lr,
                                            steps,
                                            bias,
                                        },
                                    });
                                }
                            }
                        }
                    }
                }
            }
            MethodKind::Topk => {
                if known {
                    return Ok(out);
                }
                for &k in &or_default("k", &self.k, cell.k)? {
                    anyhow::ensure!(
                        k <= cell.n_latents,
                        "topk k = {k} exceeds N = {}",
                        cell.n_latents
                    );
                    for &lr in &or_default("lr", &self.lr, 1e-3)? {
                        for &steps in &required("steps", &self.steps)? {
                            out.push(MethodSpec::Topk { k, lr, steps });
                        }
                    }
                }
            }
            MethodKind::SparseCoding => {
                let steps: Vec<Option<usize>> = if known {
                    vec![None]
                } else {
                    required("steps", &self.steps)?
                        .into_iter()
                        .map(Some)
                        .collect()
                };
                let default_iters = if known { 1000 } else { 50 };
                for &lambda in &or_default("lambda", &self.lambda, 0.03)? {
                    for &steps in &steps {
                        for &fista_iters in
                            &or_default("fista_iters", &self.fista_iters, default_iters)?
                        {
                            out.push(MethodSpec::SparseCoding {
                                lambda,
                                steps,
                                fista_iters,
                            });
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRID: &str = r#"
        name = "t"
        [[data]]
        n_latents = [16, 32]
        dim = [8]
        k = [3]
        seeds = [1, 2]
        dictionary = ["known", "learned"]
        [[method]]
        kind = "sae"
        steps = [100]
        lambda = [0.01, 0.1]
        [[method]]
        kind = "topk"
        steps = [100]
    "#;

    #[test]
    fn expansion_is_the_product_sorted_by_stable_unique_keys() {
        let runs = SweepConfig::from_toml(GRID).unwrap().expand().unwrap();
        // sae: 2 N × 2 seeds × 2 dictionaries × 2 λ; topk: learned only, 2 N × 2 seeds.
        assert_eq!(runs.len(), 16 + 4);
        let keys: Vec<String> = runs.iter().map(RunSpec::key).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys, sorted, "sorted by key, no duplicates");
        // The key depends on every field, the seed included, and on nothing else.
        let mut other = runs[0].clone();
        assert_eq!(other.key(), keys[0]);
        other.data.seed += 1;
        assert_ne!(other.key(), keys[0]);
        assert!(keys.iter().all(|k| k.len() == 64));
        // topk took the data's K by default.
        assert!(runs.iter().any(|r| r.method
            == MethodSpec::Topk {
                k: 3,
                lr: 1e-3,
                steps: 100
            }));
    }

    #[test]
    fn bad_configs_fail_with_the_offending_name() {
        let cases = [
            (
                GRID.replace("kind = \"topk\"", "kind = \"topk\"\nwidth = [3]"),
                "`width` does not apply to topk",
            ),
            (
                GRID.replace("name = \"t\"", "name = \"t\"\ncolour = 1"),
                "unknown field `colour`",
            ),
            (GRID.replace("k = [3]", "k = [40]"), "k"),
            (
                GRID.replace("seeds = [1, 2]", "seeds = []"),
                "axis `seeds` is empty",
            ),
            (
                GRID.replace("steps = [100]\n        lambda", "lambda"),
                "`steps` is required",
            ),
            (
                GRID.replace("lambda = [0.01, 0.1]", "lambda = [-1.0]"),
                "`lambda` = -1",
            ),
        ];
        for (text, needle) in cases {
            let err = format!("{:#}", SweepConfig::from_toml(&text).unwrap_err());
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }

    const PRESET_GRID: &str = r#"
        name = "r"
        [[data]]
        preset = ["ood-laptop", "synthsaebench-laptop"]
        n_latents = [64, 128]
        k = [3]
        samples = [256]
        seeds = [9]
        [[method]]
        kind = "topk"
        steps = [10]
    "#;

    #[test]
    fn preset_cells_override_the_preset_and_keep_paper_keys_unchanged() {
        let runs = SweepConfig::from_toml(PRESET_GRID)
            .unwrap()
            .expand()
            .unwrap();
        // 2 presets × 2 N × 1 seed.
        assert_eq!(runs.len(), 4);
        for r in &runs {
            let d = &r.data;
            let name = d.preset.as_deref().unwrap();
            let c = d.realistic_config().unwrap().unwrap();
            let preset = sparse_core::realistic_data::RealisticConfig::preset(name).unwrap();
            // N and the seed overridden; M and noise are the preset's own.
            assert_eq!((c.n_latents, c.seed), (d.n_latents, 9));
            assert_eq!((c.dim, d.dim), (preset.dim, preset.dim));
            assert_eq!(c.noise_std, preset.noise_std);
            assert_eq!((c.firing, c.hierarchy), (preset.firing, preset.hierarchy));
            assert!(r.canonical_json().contains(name));
            assert!(
                r.method
                    == MethodSpec::Topk {
                        k: 3,
                        lr: 1e-3,
                        steps: 10
                    }
            );
        }
        // A paper cell's canonical JSON (its run key's only input) has no
        // preset field: stores written before presets existed stay valid.
        let paper = &SweepConfig::from_toml(GRID).unwrap().expand().unwrap()[0];
        assert!(paper.data.preset.is_none());
        assert!(!paper.canonical_json().contains("preset"));
        // Generated data: the preset's law, divided so the mean square is 1.
        let mut spec = runs[0].data.clone();
        spec.samples = 64;
        let data = spec.generate().unwrap();
        let x = data.train.x.as_slice();
        let ms = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64;
        assert!((ms - 1.0).abs() < 1e-4, "mean square {ms}");
        assert_eq!(data.train.z.shape(), (64, spec.n_latents));
        assert_eq!(data.test.x.shape(), (64, spec.dim));
        let again = spec.generate().unwrap();
        assert_eq!(again.val.x, data.val.x);
    }

    #[test]
    fn bad_preset_grids_fail_with_the_offending_name() {
        let cases = [
            (
                PRESET_GRID.replace("\"ood-laptop\", ", "\"nope\", "),
                "expected one of synthsaebench-16k, synthsaebench-laptop, ood-laptop",
            ),
            (
                PRESET_GRID.replace("preset = [\"ood-laptop\", \"synthsaebench-laptop\"]\n", ""),
                "`dim` is required (or give a `preset`)",
            ),
            (
                PRESET_GRID.replace("k = [3]", "k = [100]"),
                "k = 100 must be between 1 and N = 64",
            ),
            (
                PRESET_GRID.replace(
                    "preset = [\"ood-laptop\", \"synthsaebench-laptop\"]",
                    "preset = []",
                ),
                "axis `preset` is empty",
            ),
            (
                PRESET_GRID.replace("seeds = [9]", "seeds = [9]\nnoise_std = [-0.5]"),
                "noise",
            ),
        ];
        for (text, needle) in cases {
            let err = format!("{:#}", SweepConfig::from_toml(&text).unwrap_err());
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }

    #[test]
    fn every_shipped_sweep_expands() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/sweeps");
        let mut sizes = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let config = SweepConfig::from_file(&path).unwrap();
            let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
            assert_eq!(
                config.name,
                stem,
                "{}: name should match the file",
                path.display()
            );
            sizes.insert(stem, config.expand().unwrap().len());
        }
        // The paper's grid: 5 N × 3 M × 3 K × 3 seeds × 3 methods.
        assert_eq!(sizes["scaling"], 5 * 3 * 3 * 3 * 3);
        assert_eq!(sizes["scaling-reduced"], 8 * 2 * 2);
        // λ: 9 values × 3 methods × 3 seeds; TopK: 8 k + 2 references, 3 seeds.
        assert_eq!(sizes["lambda"], 9 * 3 * 3);
        assert_eq!(sizes["topk"], 10 * 3);
        // Realistic data: 2 N × 2 seeds × 3 methods.
        assert_eq!(sizes["realistic"], 2 * 2 * 3);
        assert_eq!(sizes.len(), 9, "{sizes:?}");
    }
}
