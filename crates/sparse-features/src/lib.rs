//! What each latent of a trained encoder responds to, read off an activation
//! store.
//!
//! [`FeatureRecord`] is the unit every interpretability tool of the workspace
//! shares: the feature browser renders it, the automated-interpretability
//! pipeline explains and scores from its examples, and the exports write it in
//! the formats other tools read. Examples are whole stored contexts with the
//! latent's activation at every stored position, so a consumer can show the
//! context, highlight tokens, or hold examples out.

pub mod record;

pub use record::{ActivationExample, FeatureRecord, Histogram, LogitEntry};
