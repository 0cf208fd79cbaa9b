//! Optimal one-to-one assignment (the linear sum assignment problem) on a
//! possibly rectangular cost matrix, used to match true and learned latents.
//!
//! The solver is the shortest-augmenting-path Hungarian method in the
//! Jonker–Volgenant form described by Crouse (2016, "On implementing 2D
//! rectangular assignment algorithms"), the algorithm behind SciPy's
//! `linear_sum_assignment`: each row in turn is joined to the matching by a
//! Dijkstra search over reduced costs, and dual potentials keep those reduced
//! costs non-negative. Cost is O(r²·c) with r = min(rows, cols), c = max.

use crate::error::{Error, Result};

/// Marks "no row" / "no column" in the index arrays.
const NONE: usize = usize::MAX;

/// Optimal one-to-one assignment on the `rows × cols` row-major `cost` matrix.
///
/// Returns exactly `min(rows, cols)` pairs `(row, col)`, sorted by row, with
/// distinct rows and distinct columns, whose summed cost is minimal (or
/// maximal when `maximize`). With ties any optimal assignment may be returned.
/// An empty matrix (`rows == 0` or `cols == 0`) gives an empty vector.
///
/// Errors: [`Error::Shape`] when `cost.len() != rows * cols`;
/// [`Error::NonFinite`] when a cost is NaN or ±infinity (forbidden pairs are
/// not supported: give them a large finite cost instead);
/// [`Error::Numerical`] if costs are so large that reduced costs overflow.
pub fn linear_sum_assignment(
    cost: &[f64],
    rows: usize,
    cols: usize,
    maximize: bool,
) -> Result<Vec<(usize, usize)>> {
    if rows.checked_mul(cols) != Some(cost.len()) {
        return Err(Error::shape(
            "cost matrix",
            format!("({rows}, {cols}) = {} values", rows.saturating_mul(cols)),
            format!("{} values", cost.len()),
        ));
    }
    if let Some(p) = cost.iter().position(|c| !c.is_finite()) {
        return Err(Error::NonFinite {
            what: "cost matrix".to_string(),
            row: p / cols,
            col: p % cols,
            value: cost[p] as f32,
        });
    }
    if rows == 0 || cols == 0 {
        return Ok(Vec::new());
    }

    // The search assigns every row, so it needs rows ≤ cols: transpose if not.
    // Maximising is minimising the negated costs.
    let transpose = rows > cols;
    let (nr, nc) = if transpose {
        (cols, rows)
    } else {
        (rows, cols)
    };
    let sign = if maximize { -1.0 } else { 1.0 };
    let mut work = vec![0.0; nr * nc];
    for i in 0..rows {
        for (j, &c) in cost[i * cols..(i + 1) * cols].iter().enumerate() {
            let at = if transpose {
                j * rows + i
            } else {
                i * cols + j
            };
            work[at] = sign * c;
        }
    }

    let col4row = solve(&work, nr, nc)?;
    let mut pairs: Vec<(usize, usize)> = if transpose {
        // Rows of `work` are the original columns.
        col4row.iter().enumerate().map(|(c, &r)| (r, c)).collect()
    } else {
        col4row.iter().enumerate().map(|(r, &c)| (r, c)).collect()
    };
    pairs.sort_unstable();
    Ok(pairs)
}

/// Minimum-cost assignment of every row of the `nr × nc` matrix (`nr ≤ nc`,
/// all entries finite); returns the column of each row.
fn solve(cost: &[f64], nr: usize, nc: usize) -> Result<Vec<usize>> {
    let mut u = vec![0.0; nr]; // row potentials
    let mut v = vec![0.0; nc]; // column potentials
    let mut shortest = vec![0.0; nc]; // shortest-path cost to each column
    let mut path = vec![NONE; nc]; // predecessor row of each column
    let mut col4row = vec![NONE; nr];
    let mut row4col = vec![NONE; nc];
    let mut row_in_tree = vec![false; nr];
    let mut col_in_tree = vec![false; nc];
    let mut remaining = vec![0; nc]; // columns not yet in the tree

    for cur_row in 0..nr {
        shortest.fill(f64::INFINITY);
        row_in_tree.fill(false);
        col_in_tree.fill(false);
        // Reversed order, as in SciPy, so ties break towards low column indices.
        for (it, r) in remaining.iter_mut().enumerate() {
            *r = nc - it - 1;
        }
        let mut n_remaining = nc;
        let mut min_val = 0.0;
        let mut i = cur_row;

        // Dijkstra from `cur_row` until the closest column is a free one.
        let sink = loop {
            row_in_tree[i] = true;
            let mut lowest = f64::INFINITY;
            let mut index = NONE;
            let row = &cost[i * nc..(i + 1) * nc];
            for (it, &j) in remaining[..n_remaining].iter().enumerate() {
                let reduced = min_val + row[j] - u[i] - v[j];
                if reduced < shortest[j] {
                    path[j] = i;
                    shortest[j] = reduced;
                }
                // Among equally close columns prefer a free one: it ends the search.
                if shortest[j] < lowest || (shortest[j] == lowest && row4col[j] == NONE) {
                    lowest = shortest[j];
                    index = it;
                }
            }
            if index == NONE || !lowest.is_finite() {
                // Finite inputs only reach here when reduced costs overflow f64.
                return Err(Error::Numerical {
                    what: "linear_sum_assignment".to_string(),
                    reason: "reduced costs overflowed; rescale the cost matrix".to_string(),
                });
            }
            min_val = lowest;
            let j = remaining[index];
            col_in_tree[j] = true;
            n_remaining -= 1;
            remaining[index] = remaining[n_remaining];
            if row4col[j] == NONE {
                break j;
            }
            i = row4col[j];
        };

        // Update the potentials so that reduced costs stay non-negative and are
        // zero along the matching.
        u[cur_row] += min_val;
        for (r, (ur, &in_tree)) in u.iter_mut().zip(&row_in_tree).enumerate() {
            if in_tree && r != cur_row {
                *ur += min_val - shortest[col4row[r]];
            }
        }
        for ((vc, &in_tree), &s) in v.iter_mut().zip(&col_in_tree).zip(&shortest) {
            if in_tree {
                *vc -= min_val - s;
            }
        }

        // Flip the alternating path back from the sink to `cur_row`.
        let mut j = sink;
        loop {
            let r = path[j];
            row4col[j] = r;
            std::mem::swap(&mut col4row[r], &mut j);
            if r == cur_row {
                break;
            }
        }
    }
    Ok(col4row)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Best total over every injection of the smaller side into the larger,
    /// by exhaustive search (shared with the metrics tests).
    pub(crate) fn brute_force(cost: &[f64], rows: usize, cols: usize, maximize: bool) -> f64 {
        fn go(
            depth: usize,
            n: usize,
            used: &mut [bool],
            at: &dyn Fn(usize, usize) -> f64,
            maximize: bool,
        ) -> f64 {
            if depth == n {
                return 0.0;
            }
            let mut best = if maximize {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            };
            for j in 0..used.len() {
                if !used[j] {
                    used[j] = true;
                    let total = at(depth, j) + go(depth + 1, n, used, at, maximize);
                    used[j] = false;
                    best = if maximize {
                        best.max(total)
                    } else {
                        best.min(total)
                    };
                }
            }
            best
        }
        if rows == 0 || cols == 0 {
            return 0.0;
        }
        if rows <= cols {
            let at = |i: usize, j: usize| cost[i * cols + j];
            go(0, rows, &mut vec![false; cols], &at, maximize)
        } else {
            let at = |j: usize, i: usize| cost[i * cols + j];
            go(0, cols, &mut vec![false; rows], &at, maximize)
        }
    }

    /// Checks the structural contract and returns the summed cost.
    fn check_valid(pairs: &[(usize, usize)], cost: &[f64], rows: usize, cols: usize) -> f64 {
        assert_eq!(pairs.len(), rows.min(cols));
        let mut col_used = vec![false; cols];
        for (k, &(r, c)) in pairs.iter().enumerate() {
            assert!(r < rows && c < cols, "pair ({r}, {c}) out of range");
            if k > 0 {
                assert!(pairs[k - 1].0 < r, "rows not strictly increasing");
            }
            assert!(!col_used[c], "column {c} used twice");
            col_used[c] = true;
        }
        pairs.iter().map(|&(r, c)| cost[r * cols + c]).sum()
    }

    fn assert_optimal(cost: &[f64], rows: usize, cols: usize, maximize: bool) {
        let pairs = linear_sum_assignment(cost, rows, cols, maximize).unwrap();
        let total = check_valid(&pairs, cost, rows, cols);
        let best = brute_force(cost, rows, cols, maximize);
        assert!(
            (total - best).abs() <= 1e-9 * (1.0 + best.abs()),
            "{rows}×{cols} maximize={maximize}: got {total}, optimum {best}"
        );
    }

    #[test]
    fn matches_brute_force_on_random_matrices() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let shapes = [
            (1, 1),
            (2, 2),
            (3, 3),
            (5, 5),
            (6, 6),
            (1, 5),
            (5, 1),
            (2, 6),
            (4, 7),
            (7, 4),
            (6, 3),
        ];
        for &(rows, cols) in &shapes {
            for _ in 0..5 {
                let cost: Vec<f64> = (0..rows * cols)
                    .map(|_| rng.gen_range(-10.0..10.0))
                    .collect();
                assert_optimal(&cost, rows, cols, false);
                assert_optimal(&cost, rows, cols, true);
            }
        }
    }

    #[test]
    fn ties_give_a_valid_optimal_assignment() {
        // All equal: any injection is optimal.
        let cost = vec![3.0; 4 * 6];
        assert_optimal(&cost, 4, 6, false);
        assert_optimal(&cost, 6, 4, true);
        // Identical rows and many repeated values.
        let cost = [1.0, 2.0, 1.0, 1.0, 2.0, 1.0, 1.0, 2.0, 1.0];
        assert_optimal(&cost, 3, 3, false);
        assert_optimal(&cost, 3, 3, true);
    }

    #[test]
    fn beats_greedy_where_greedy_is_suboptimal() {
        // Greedy maximisation takes the 10 first and is left with the 1: total 11.
        // The optimum pairs the two 9s: total 18.
        let cost = [10.0, 9.0, 9.0, 1.0];
        let greedy_total = 10.0 + 1.0;
        let pairs = linear_sum_assignment(&cost, 2, 2, true).unwrap();
        assert_eq!(pairs, vec![(0, 1), (1, 0)]);
        assert!(check_valid(&pairs, &cost, 2, 2) > greedy_total);
        // The same trap for minimisation on the negated matrix.
        let neg: Vec<f64> = cost.iter().map(|c| -c).collect();
        let pairs = linear_sum_assignment(&neg, 2, 2, false).unwrap();
        assert_eq!(pairs, vec![(0, 1), (1, 0)]);
        // Rectangular: greedy takes 10 from row 0, forcing row 1 onto its worst column.
        #[rustfmt::skip]
        let cost = [
            10.0, 9.0, 0.0,
            9.0, 0.0, 0.0,
        ];
        let pairs = linear_sum_assignment(&cost, 2, 3, true).unwrap();
        assert_eq!(pairs, vec![(0, 1), (1, 0)]);
    }

    #[test]
    fn recovers_a_hidden_permutation_at_larger_size() {
        let n = 60;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut perm: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            perm.swap(i, rng.gen_range(0..=i));
        }
        // Cost 0 on the permutation, at least 1 elsewhere: it is the unique optimum.
        let mut cost: Vec<f64> = (0..n * n).map(|_| rng.gen_range(1.0..2.0)).collect();
        for (i, &j) in perm.iter().enumerate() {
            cost[i * n + j] = 0.0;
        }
        let pairs = linear_sum_assignment(&cost, n, n, false).unwrap();
        let expected: Vec<(usize, usize)> = perm.iter().copied().enumerate().collect();
        assert_eq!(pairs, expected);
    }

    #[test]
    fn empty_matrices_give_no_pairs() {
        assert!(linear_sum_assignment(&[], 0, 5, false).unwrap().is_empty());
        assert!(linear_sum_assignment(&[], 3, 0, true).unwrap().is_empty());
        assert!(linear_sum_assignment(&[], 0, 0, false).unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_input() {
        let err = linear_sum_assignment(&[1.0, 2.0, 3.0], 2, 2, false).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        assert!(err.to_string().contains("(2, 2)"), "{err}");
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = linear_sum_assignment(&[1.0, bad, 3.0, 4.0], 2, 2, false).unwrap_err();
            assert!(
                matches!(err, Error::NonFinite { row: 0, col: 1, .. }),
                "{err}"
            );
        }
    }

    fn cost_matrix<T: Arbitrary + Copy + Into<f64> + std::fmt::Debug>(
        values: impl Strategy<Value = T> + Clone,
    ) -> impl Strategy<Value = (usize, usize, Vec<f64>)> {
        (0usize..=6, 0usize..=6).prop_flat_map(move |(r, c)| {
            (
                Just(r),
                Just(c),
                prop::collection::vec(values.clone().prop_map(Into::into), r * c),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn prop_optimal_with_many_ties(
            (rows, cols, cost) in cost_matrix(-4i32..4),
            maximize in any::<bool>(),
        ) {
            assert_optimal(&cost, rows, cols, maximize);
        }

        #[test]
        fn prop_optimal_with_real_costs(
            (rows, cols, cost) in cost_matrix(-1.0e3f64..1.0e3),
            maximize in any::<bool>(),
        ) {
            assert_optimal(&cost, rows, cols, maximize);
        }
    }
}
