//! A global allocator for fuzz tests: counts, per thread, the bytes live and
//! their peak, and refuses any single allocation above a cap while a
//! [`bounded`] section runs, so that "never allocates more than a bound" is
//! checked rather than hoped for. A refused allocation aborts the test
//! binary with Rust's "memory allocation of N bytes failed" message.
//!
//! Install it in a test binary with
//! `#[global_allocator] static A: count_alloc::Counting = count_alloc::Counting;`.

#![allow(dead_code)] // each test binary uses a different subset

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The counting allocator (delegates to [`System`]).
pub struct Counting;

thread_local! {
    // `const` initialisers: no allocation and no destructor, so they are
    // safe to touch from inside the allocator.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static CAP: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn record(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let v = live.get() + delta;
        live.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

fn allowed(size: usize) -> bool {
    CAP.try_with(|c| size <= c.get()).unwrap_or(true)
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping touches only const-initialised thread-locals.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if !allowed(l.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(l);
        if !p.is_null() {
            record(l.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if !allowed(l.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            record(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        record(-(l.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if !allowed(new) {
            return std::ptr::null_mut();
        }
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            record(new as isize - l.size() as isize);
        }
        q
    }
}

/// Runs `f` with single allocations capped at `cap` bytes on this thread;
/// returns its result and the peak bytes live above the starting level.
pub fn bounded<T>(cap: usize, f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let before = CAP.with(|c| c.replace(cap));
    let out = f();
    CAP.with(|c| c.set(before));
    let peak = PEAK.with(Cell::get);
    (out, (peak - start).max(0) as usize)
}

/// A fixed-seed proptest configuration with `cases` cases, so that CI runs
/// the same inputs every time; `PROPTEST_CASES` (and `PROPTEST_RNG_SEED`)
/// in the environment override both for a longer local run.
pub fn fuzz_config(cases: u32) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, RngSeed};
    let base = Config::default(); // reads the PROPTEST_* variables
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            base.cases
        } else {
            cases
        },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            base.rng_seed
        } else {
            RngSeed::Fixed(0x5EED_F022)
        },
        failure_persistence: None,
        ..base
    }
}
