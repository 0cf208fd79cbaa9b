//! Hook points: the places in the residual stream whose activations can be read
//! or overwritten, named as TransformerLens and SAELens name them
//! (`blocks.{L}.hook_resid_pre`, ...), so that SAEs trained elsewhere can be
//! matched to ours by name.
//!
//! Layers are 0-based. The residual stream after block `L` (`resid_post` of `L`)
//! is the stream entering block `L + 1` (`resid_pre` of `L + 1`): the same tensor.
//! Inside a block, `resid_post(L) = resid_pre(L) + attn_out(L) + mlp_out(L)`.

use crate::error::{LmError, Result};
use std::fmt;
use std::str::FromStr;

/// Which activation inside a transformer block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookKind {
    /// The residual stream entering the block (before its attention).
    ResidPre,
    /// The residual stream leaving the block (after its MLP is added).
    ResidPost,
    /// The attention sub-layer's output, after the output projection, before it is added to the stream.
    AttnOut,
    /// The MLP sub-layer's output, before it is added to the stream.
    MlpOut,
}

impl HookKind {
    /// All kinds, in the order they occur inside a block (resid_pre first).
    pub const ALL: [HookKind; 4] = [
        HookKind::ResidPre,
        HookKind::AttnOut,
        HookKind::MlpOut,
        HookKind::ResidPost,
    ];

    /// The TransformerLens suffix, e.g. `hook_resid_pre`.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::ResidPre => "hook_resid_pre",
            HookKind::ResidPost => "hook_resid_post",
            HookKind::AttnOut => "hook_attn_out",
            HookKind::MlpOut => "hook_mlp_out",
        }
    }
}

/// One activation site: `layer` (0-based block index) and `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookPoint {
    /// 0-based block index.
    pub layer: usize,
    /// Which activation of that block.
    pub kind: HookKind,
}

/// The valid forms, for error messages.
const VALID_FORMS: &str = "expected blocks.<L>.hook_resid_pre, blocks.<L>.hook_resid_post, \
     blocks.<L>.hook_attn_out or blocks.<L>.hook_mlp_out, with <L> a 0-based block index";

impl HookPoint {
    /// A hook point at `layer`.
    pub fn new(layer: usize, kind: HookKind) -> Self {
        HookPoint { layer, kind }
    }

    /// `blocks.{layer}.hook_resid_pre`.
    pub fn resid_pre(layer: usize) -> Self {
        Self::new(layer, HookKind::ResidPre)
    }

    /// `blocks.{layer}.hook_resid_post`.
    pub fn resid_post(layer: usize) -> Self {
        Self::new(layer, HookKind::ResidPost)
    }

    /// `blocks.{layer}.hook_attn_out`.
    pub fn attn_out(layer: usize) -> Self {
        Self::new(layer, HookKind::AttnOut)
    }

    /// `blocks.{layer}.hook_mlp_out`.
    pub fn mlp_out(layer: usize) -> Self {
        Self::new(layer, HookKind::MlpOut)
    }

    /// How many blocks must run to reach this point: `layer` for `resid_pre`
    /// (the stream before block `layer`), `layer + 1` otherwise.
    pub fn blocks_needed(self) -> usize {
        match self.kind {
            HookKind::ResidPre => self.layer,
            _ => self.layer + 1,
        }
    }

    /// Checks that the model has this layer; the error names both.
    pub fn check(self, n_layers: usize) -> Result<()> {
        if self.layer < n_layers {
            Ok(())
        } else {
            Err(LmError::InvalidHook {
                hook: self.to_string(),
                reason: format!(
                    "layer {} does not exist: the model has {n_layers} layers (0..={})",
                    self.layer,
                    n_layers.saturating_sub(1)
                ),
            })
        }
    }

    /// Parses a hook name and checks its layer against `n_layers`.
    pub fn parse_for(s: &str, n_layers: usize) -> Result<Self> {
        let h: HookPoint = s.parse()?;
        h.check(n_layers)?;
        Ok(h)
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blocks.{}.{}", self.layer, self.kind.name())
    }
}

impl FromStr for HookPoint {
    type Err = LmError;

    /// Parses `blocks.{L}.hook_{resid_pre|resid_post|attn_out|mlp_out}`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || LmError::InvalidHook {
            hook: s.to_string(),
            reason: VALID_FORMS.to_string(),
        };
        let rest = s.strip_prefix("blocks.").ok_or_else(bad)?;
        let (layer, suffix) = rest.split_once('.').ok_or_else(bad)?;
        // Digits only: `usize::from_str` would accept a leading '+'.
        if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let layer: usize = layer.parse().map_err(|_| bad())?;
        let kind = HookKind::ALL
            .into_iter()
            .find(|k| k.name() == suffix)
            .ok_or_else(bad)?;
        Ok(HookPoint { layer, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        for kind in HookKind::ALL {
            for layer in [0, 7, 29] {
                let h = HookPoint::new(layer, kind);
                assert_eq!(h.to_string().parse::<HookPoint>().unwrap(), h);
            }
        }
        assert_eq!(
            "blocks.15.hook_resid_post".parse::<HookPoint>().unwrap(),
            HookPoint::resid_post(15)
        );
    }

    #[test]
    fn bad_names_are_errors_naming_the_string_and_the_forms() {
        for s in [
            "",
            "blocks.x.hook_resid_pre",
            "blocks.+1.hook_resid_pre",
            "blocks.1.hook_resid",
            "block.1.hook_resid_pre",
            "blocks.1.hook_resid_pre.extra",
            "blocks..hook_mlp_out",
        ] {
            let e = s.parse::<HookPoint>().unwrap_err().to_string();
            assert!(e.contains(&format!("{s:?}")), "{e}");
            assert!(e.contains("blocks.<L>.hook_mlp_out"), "{e}");
        }
    }

    #[test]
    fn layer_out_of_range_names_layer_and_depth() {
        let e = HookPoint::parse_for("blocks.30.hook_resid_post", 30)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer 30") && e.contains("30 layers"), "{e}");
        assert!(HookPoint::parse_for("blocks.29.hook_resid_post", 30).is_ok());
    }

    #[test]
    fn blocks_needed() {
        assert_eq!(HookPoint::resid_pre(3).blocks_needed(), 3);
        assert_eq!(HookPoint::resid_post(3).blocks_needed(), 4);
        assert_eq!(HookPoint::attn_out(0).blocks_needed(), 1);
    }
}
