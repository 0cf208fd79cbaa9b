//! Statistical and exact checks of the realistic generator: firing
//! frequencies against the target law, hierarchy constraints, copula
//! correlations against Sheppard's formula, orthogonalisation, OOD split.

use super::*;

/// A plain config: Zipf firing, no structure, constant magnitudes.
fn plain(n: usize, dim: usize, seed: u64) -> RealisticConfig {
    RealisticConfig {
        n_latents: n,
        dim,
        firing: FiringLaw::ZipfTargetL0 {
            exponent: 1.0,
            target_l0: 5.0,
        },
        correlation: None,
        hierarchy: None,
        magnitude_mean: MagnitudeLaw::Constant { value: 1.0 },
        magnitude_std: MagnitudeLaw::Constant { value: 0.0 },
        orthogonalization: None,
        bias_norm: 0.0,
        noise_std: 0.0,
        ood: None,
        seed,
    }
}

fn firing_counts(z: &Matrix) -> Vec<f64> {
    let mut c = vec![0.0; z.cols()];
    for row in z.rows_iter() {
        for (j, &v) in row.iter().enumerate() {
            if v > 0.0 {
                c[j] += 1.0;
            }
        }
    }
    c
}

#[test]
fn zipf_laws_match_their_definitions() {
    // SAELens' min–max rescaled law, by hand for N=3, exponent 1: raw 1, 1/2, 1/3.
    let p = FiringLaw::Zipf {
        exponent: 1.0,
        max_prob: 0.5,
        min_prob: 0.1,
    }
    .probabilities(3)
    .unwrap();
    let want = [0.5, 0.1 + 0.4 * (0.5 - 1.0 / 3.0) / (1.0 - 1.0 / 3.0), 0.1];
    for (a, b) in p.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{p:?}");
    }
    // Target-L0 law: sums to the target, follows r^-a where unclipped.
    let p = FiringLaw::ZipfTargetL0 {
        exponent: 0.7,
        target_l0: 12.0,
    }
    .probabilities(1000)
    .unwrap();
    assert!((p.iter().sum::<f64>() - 12.0).abs() < 1e-9);
    let ratio = p[99] / p[9];
    assert!((ratio - (10.0f64).powf(-0.7)).abs() < 1e-9, "{ratio}");
}

#[test]
fn empirical_firing_frequencies_follow_the_target_law() {
    // Independent firing: each count is Binomial(n, p_i). Chi-square over the
    // features with expected counts ≥ 5 must be within 5 sd of its dof, and
    // the mean L0 within 4 standard errors of the target.
    let config = plain(200, 16, 7);
    let model = RealisticModel::new(&config).unwrap();
    let n = 20_000;
    let z = model.codes(n, 1, false).unwrap();
    let counts = firing_counts(&z);
    let (mut chi2, mut dof) = (0.0, 0.0);
    for (c, &p) in counts.iter().zip(&model.base_probabilities) {
        let e = n as f64 * p;
        if e >= 5.0 {
            chi2 += (c - e).powi(2) / (e * (1.0 - p));
            dof += 1.0;
        }
    }
    assert!(
        (chi2 - dof).abs() < 5.0 * (2.0 * dof).sqrt(),
        "chi2 {chi2} dof {dof}"
    );
    let l0: f64 = counts.iter().sum::<f64>() / n as f64;
    let var: f64 = model.base_probabilities.iter().map(|p| p * (1.0 - p)).sum();
    assert!(
        (l0 - 5.0).abs() < 4.0 * (var / n as f64).sqrt(),
        "mean L0 {l0}"
    );
    // The copula keeps the marginals: the same test with correlated firing.
    let config = RealisticConfig {
        correlation: Some(LowRankCorrelation {
            rank: 4,
            scale: 0.3,
        }),
        ..plain(200, 16, 7)
    };
    let model = RealisticModel::new(&config).unwrap();
    let counts = firing_counts(&model.codes(n, 1, false).unwrap());
    for (i, (c, &p)) in counts.iter().zip(&model.base_probabilities).enumerate() {
        // Correlated samples are still independent across rows: binomial sd.
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (c - n as f64 * p).abs() < 5.0 * sd + 1.0,
            "feature {i}: {c} vs {}",
            n as f64 * p
        );
    }
}

#[test]
fn copula_correlations_match_sheppards_formula() {
    // With p = 1/2 the thresholds are 0 and P(both fire) = 1/4 + asin(ρ)/(2π)
    // (Sheppard), so the phi coefficient of the firing indicators is 2 asin(ρ)/π.
    let config = RealisticConfig {
        firing: FiringLaw::ZipfTargetL0 {
            exponent: 0.0,
            target_l0: 4.0,
        },
        correlation: Some(LowRankCorrelation {
            rank: 2,
            scale: 0.6,
        }),
        ..plain(8, 4, 11)
    };
    let model = RealisticModel::new(&config).unwrap();
    assert!(model
        .base_probabilities
        .iter()
        .all(|&p| (p - 0.5).abs() < 1e-12));
    let n = 40_000;
    let z = model.codes(n, 1, false).unwrap();
    let mut checked = 0;
    for i in 0..8 {
        for j in i + 1..8 {
            let rho = model.latent_correlation(i, j);
            let both = z.rows_iter().filter(|r| r[i] > 0.0 && r[j] > 0.0).count() as f64 / n as f64;
            let phi = (both - 0.25) / 0.25;
            let want = 2.0 * rho.asin() / std::f64::consts::PI;
            // sd of the phi estimate ≤ 1/sqrt(n) ≈ 0.005.
            assert!(
                (phi - want).abs() < 0.03,
                "({i},{j}): ρ={rho} φ={phi} want {want}"
            );
            checked += usize::from(rho.abs() > 0.2);
        }
    }
    assert!(
        checked >= 3,
        "too few strongly correlated pairs to be a test"
    );
}

#[test]
fn hierarchy_constraints_are_never_violated() {
    let config = RealisticConfig {
        n_latents: 300,
        firing: FiringLaw::Zipf {
            exponent: 0.5,
            max_prob: 0.6,
            min_prob: 0.05,
        },
        hierarchy: Some(HierarchyConfig {
            roots: 5,
            branching: 3,
            depth: 3,
            mutually_exclusive: true,
            compensate_probabilities: true,
            scale_children_by_parent: true,
        }),
        correlation: Some(LowRankCorrelation {
            rank: 5,
            scale: 0.1,
        }),
        magnitude_mean: MagnitudeLaw::Linear {
            start: 5.0,
            end: 4.0,
        },
        magnitude_std: MagnitudeLaw::FoldedNormal {
            mean: 0.5,
            std: 0.5,
        },
        ..plain(300, 32, 3)
    };
    let model = RealisticModel::new(&config).unwrap();
    let t = model.tree.as_ref().unwrap();
    // 5 + 15 + 45 + 135 nodes, numbered breadth-first.
    assert_eq!(t.size, 200);
    assert_eq!(t.parent[5], Some(0));
    assert_eq!(t.children[0], vec![5, 6, 7]);
    let z = model.codes(5000, 1, false).unwrap();
    let mut child_fired = 0;
    for row in z.rows_iter() {
        for i in 0..t.size {
            if let Some(p) = t.parent[i] {
                if row[i] > 0.0 {
                    child_fired += 1;
                    assert!(row[p] > 0.0, "child {i} fired without parent {p}");
                }
            }
            let active = t.children[i].iter().filter(|&&c| row[c] > 0.0).count();
            assert!(active <= 1, "{active} siblings under {i} fired together");
        }
    }
    assert!(
        child_fired > 1000,
        "children must actually fire ({child_fired})"
    );
    // Compensation raises children's sampling probabilities above their base.
    assert!(model.sampling_probabilities[5] > model.base_probabilities[5]);
}

#[test]
fn orthogonalization_reduces_atom_overlap() {
    let overlap = |steps: usize| {
        let config = RealisticConfig {
            orthogonalization: Some(Orthogonalization {
                steps,
                lr: 0.01,
                target_cos: 0.0,
            }),
            ..plain(96, 24, 5)
        };
        let d = RealisticModel::new(&config).unwrap().dictionary;
        assert!(d.row_norms().iter().all(|v| (v - 1.0).abs() < 1e-5));
        let g = crate::linalg::gram(&d);
        let mut s = 0.0f64;
        for i in 0..96 {
            for j in 0..96 {
                if i != j {
                    s += (g.get(i, j) as f64).powi(2);
                }
            }
        }
        s / (96.0 * 95.0)
    };
    let (none, some, more) = (overlap(0), overlap(3), overlap(200));
    // The Welch bound: mean squared cosine of 96 unit vectors in 24 dims ≥ (96−24)/(24·95),
    // reached by tight frames; 200 steps get there, 3 steps part of the way.
    let welch = (96.0 - 24.0) / (24.0 * 95.0);
    assert!(none > some && some > more, "{none} {some} {more}");
    assert!(
        more >= welch - 1e-6 && more < welch * 1.01,
        "{more} vs {welch}"
    );
}

#[test]
fn ood_split_holds_out_every_cross_group_combination() {
    let config = RealisticConfig::ood_laptop();
    let model = RealisticModel::new(&config).unwrap();
    let data = model.generate(2000, 10, 500).unwrap();
    let groups_of = |row: &[f32]| {
        let mut g: Vec<usize> = row
            .iter()
            .enumerate()
            .filter(|(_, &v)| v > 0.0)
            .map(|(i, _)| model.group[i])
            .collect();
        g.sort();
        g.dedup();
        g.len()
    };
    for split in [&data.train, &data.val, &data.test] {
        assert!(split.z.rows_iter().all(|r| groups_of(r) <= 1));
    }
    let ood = data.test_ood.as_ref().unwrap();
    assert!(ood.z.rows_iter().all(|r| groups_of(r) >= 2));
    // Trees stay within one group.
    let t = model.tree.as_ref().unwrap();
    for i in 0..t.size {
        if let Some(p) = t.parent[i] {
            assert_eq!(model.group[i], model.group[p]);
        }
    }
}

#[test]
fn generation_is_deterministic_and_splits_are_independent() {
    let config = RealisticConfig::ood_laptop();
    let a = RealisticModel::new(&config)
        .unwrap()
        .generate(50, 20, 30)
        .unwrap();
    let b = RealisticModel::new(&config)
        .unwrap()
        .generate(80, 20, 30)
        .unwrap();
    assert_eq!(a.dictionary.as_slice(), b.dictionary.as_slice());
    assert_eq!(a.val.x.as_slice(), b.val.x.as_slice());
    assert_eq!(a.train.x.row(10), b.train.x.row(10));
    let c = RealisticModel::new(&RealisticConfig { seed: 1, ..config })
        .unwrap()
        .generate(50, 20, 30)
        .unwrap();
    assert_ne!(a.val.x.as_slice(), c.val.x.as_slice());
}

#[test]
fn bad_configs_fail_with_clear_errors() {
    let bad = |c: RealisticConfig, needle: &str| {
        let e = RealisticModel::new(&c).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    };
    bad(plain(0, 4, 1), "latents");
    bad(
        RealisticConfig {
            firing: FiringLaw::ZipfTargetL0 {
                exponent: 1.0,
                target_l0: 50.0,
            },
            ..plain(10, 4, 1)
        },
        "target_l0",
    );
    bad(
        RealisticConfig {
            firing: FiringLaw::Zipf {
                exponent: 1.0,
                max_prob: 0.1,
                min_prob: 0.2,
            },
            ..plain(10, 4, 1)
        },
        "min_prob",
    );
    bad(
        RealisticConfig {
            ood: Some(OodConfig { groups: 1 }),
            ..plain(10, 4, 1)
        },
        "ood.groups",
    );
    bad(
        RealisticConfig {
            noise_std: f32::NAN,
            ..plain(10, 4, 1)
        },
        "noise",
    );
    assert!(RealisticConfig::preset("nope")
        .unwrap_err()
        .to_string()
        .contains("synthsaebench-16k"));
    let model = RealisticModel::new(&plain(10, 4, 1)).unwrap();
    assert!(model.split(5, 0, false).is_err());
    assert!(model
        .codes(5, 1, true)
        .unwrap_err()
        .to_string()
        .contains("OOD"));
}

#[test]
fn synthsaebench_16k_preset_matches_the_published_structure() {
    // Building the full preset (orthogonalising 16k atoms) takes minutes on a
    // laptop, so this checks the structure and samples codes without the
    // dictionary step; the published model has true L0 ≈ 34.
    let config = RealisticConfig {
        orthogonalization: None,
        dim: 8,
        ..RealisticConfig::preset("synthsaebench-16k").unwrap()
    };
    let model = RealisticModel::new(&config).unwrap();
    let t = model.tree.as_ref().unwrap();
    assert_eq!(t.size, 128 + 512 + 2048 + 8192);
    let z = model.codes(400, 1, false).unwrap();
    let l0 = firing_counts(&z).iter().sum::<f64>() / 400.0;
    assert!((28.0..40.0).contains(&l0), "true L0 {l0}");
}

#[test]
fn inverse_normal_cdf_inverts_the_cdf() {
    for &p in &[1e-6, 0.001, 0.02, 0.3, 0.5, 0.77, 0.99, 1.0 - 1e-5] {
        let x = inverse_normal_cdf(p);
        assert!((normal_cdf(x) - p).abs() < 1e-6 * p.max(1e-3), "{p}: {x}");
    }
    assert!((inverse_normal_cdf(0.975) - 1.959_963_984_540_054).abs() < 1e-5);
}
