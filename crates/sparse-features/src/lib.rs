//! What each latent of a trained encoder responds to, read off an activation
//! store.
//!
//! [`FeatureRecord`] is the unit every interpretability tool of the workspace
//! shares: the feature browser renders it, the automated-interpretability
//! pipeline explains and scores from its examples, and the exports write it in
//! the formats other tools read. Examples are whole stored contexts with the
//! latent's activation at every stored position, so a consumer can show the
//! context, highlight tokens, or hold examples out.
//!
//! - [`stats`]: the per-latent statistics of one streaming pass in bounded
//!   memory (top-k heaps, a seeded reservoir for quantile samples, a
//!   doubling histogram), tested against brute force;
//! - [`collect`]: the pass over a split of a store with the SAE's encoder or
//!   FISTA on its decoder, and the records with token text and logit effects;
//! - [`export`]: Neuronpedia-style feature JSON and a delphi latent cache;
//! - [`site`]: the static feature browser (HTML/CSS/JS embedded in the crate).

pub mod collect;
pub mod export;
pub mod record;
pub mod site;
pub mod stats;

pub use collect::{logit_effects, records, scan, Scan, ScanOptions, TokenText};
pub use record::{ActivationExample, FeatureRecord, Histogram, LogitEntry};
pub use stats::{LatentStats, StatsOptions};
