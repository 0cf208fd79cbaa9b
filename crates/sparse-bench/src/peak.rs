//! The machine's measured f32 FMA peak: independent fused multiply-add
//! chains on every core, with the widest vectors the CPU has (AVX-512, else
//! AVX2 + FMA, else scalar). GEMM throughput is reported against it, as a
//! share of what the silicon actually does rather than of a nominal clock.

use std::time::Instant;

/// Independent accumulator chains per thread: enough to cover the FMA
/// latency (4 cycles) on two pipes.
const CHAINS: usize = 12;

/// f32 lanes per vector of the widest FMA this CPU runs, and its name.
pub fn vector_width() -> (usize, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return (16, "avx512");
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return (8, "avx2+fma");
        }
    }
    (1, "scalar")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for c in acc.iter_mut() {
            *c = _mm512_fmadd_ps(*c, a, b);
        }
    }
    acc.iter().map(|c| _mm512_reduce_add_ps(*c)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for c in acc.iter_mut() {
            *c = _mm256_fmadd_ps(*c, a, b);
        }
    }
    let mut out = [0.0f32; 8];
    let mut sum = 0.0;
    for c in acc {
        _mm256_storeu_ps(out.as_mut_ptr(), c);
        sum += out.iter().sum::<f32>();
    }
    sum
}

fn fma_loop_scalar(iters: usize) -> f32 {
    let mut acc = [1.0f32; CHAINS];
    for _ in 0..iters {
        for c in acc.iter_mut() {
            *c = c.mul_add(0.999_999, 1e-7);
        }
    }
    acc.iter().sum()
}

/// Runs the FMA loop on `threads` threads for `iters` iterations each;
/// returns the f32 GFLOP/s achieved (an FMA counts as 2 FLOPs).
pub fn fma_gflops(threads: usize, iters: usize) -> f64 {
    let (lanes, kind) = vector_width();
    let start = Instant::now();
    let sums: Vec<f32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || match kind {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the feature was detected at run time by `vector_width`.
                    "avx512" => unsafe { fma_loop_avx512(iters) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    "avx2+fma" => unsafe { fma_loop_avx2(iters) },
                    _ => fma_loop_scalar(iters),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("FMA thread"))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    // Keep the result observable so the loops cannot be optimised away.
    assert!(sums.iter().all(|s| s.is_finite()));
    (threads * iters * CHAINS * lanes * 2) as f64 / secs / 1e9
}

/// The best of `rounds` runs of about a quarter second each on every core.
pub fn measured_peak_gflops(rounds: usize) -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Calibrate the iteration count to ~0.25 s.
    let probe = 1_000_000;
    let g = fma_gflops(threads, probe);
    let (lanes, _) = vector_width();
    let flops_per_iter = (threads * CHAINS * lanes * 2) as f64;
    let iters = ((0.25 * g * 1e9 / flops_per_iter) as usize).max(probe);
    (0..rounds)
        .map(|_| fma_gflops(threads, iters))
        .fold(g, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fma_loop_reports_a_plausible_rate() {
        // One core runs at least one FMA per cycle at ≥ 0.5 GHz, and no more
        // than 2 pipes × 16 lanes × 2 FLOPs at 10 GHz.
        let g = fma_gflops(1, 200_000);
        assert!(g > 1.0 && g < 640.0, "{g} GFLOP/s");
    }
}
