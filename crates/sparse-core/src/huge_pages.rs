//! A global allocator that asks Linux to back large allocations with
//! transparent huge pages (2 MiB instead of 4 KiB).
//!
//! The hot products walk matrices of tens of megabytes with strides of tens
//! of kilobytes (a 16,384-column row is 64 KiB): with 4 KiB pages nearly every
//! row of a packed strip lands on its own page and the TLB misses. numpy asks
//! for huge pages on every array of 4 MiB or more (`madvise(MADV_HUGEPAGE)`);
//! so does this allocator, with the same threshold. Most Linux systems leave
//! transparent huge pages to `madvise` (`/sys/kernel/mm/transparent_hugepage/
//! enabled`), so without the call large matrices never get them. Measured on
//! the bench GEMM (1024 × 768 · 768 × 16384, two threads, interleaved runs):
//! 7 % less time (`docs/benchmarks.md`).
//!
//! Install it in a binary with
//! `#[global_allocator] static ALLOC: sparse_core::huge_pages::HugePageAlloc = sparse_core::huge_pages::HugePageAlloc;`.
//! Everything is delegated to [`System`]; the advice is a hint the kernel may
//! ignore (and does, where huge pages are off), so it never fails an
//! allocation. Elsewhere than on Linux it is [`System`] unchanged.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations of at least this many bytes are advised to use huge pages
/// (numpy's threshold).
pub const HUGE_PAGE_THRESHOLD: usize = 4 << 20;

/// [`System`], plus huge-page advice for allocations of at least
/// [`HUGE_PAGE_THRESHOLD`] bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct HugePageAlloc;

// SAFETY: every call is forwarded unchanged to the system allocator; the
// advice only changes how the kernel backs pages already owned by the block.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        advise(ptr, layout.size());
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // Zeroed blocks this large usually come straight from `mmap`, untouched:
        // advised before the first write, they fault in as huge pages.
        let ptr = System.alloc_zeroed(layout);
        advise(ptr, layout.size());
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        advise(new, new_size);
        new
    }
}

/// The whole 4 KiB pages inside a block at `addr` of `size` bytes, if the
/// block is large enough to be advised: pages shared with a neighbouring
/// block are left alone.
fn advice_range(addr: usize, size: usize) -> Option<std::ops::Range<usize>> {
    const PAGE: usize = 4096;
    if addr == 0 || size < HUGE_PAGE_THRESHOLD {
        return None;
    }
    let start = addr.next_multiple_of(PAGE);
    let end = (addr + size) / PAGE * PAGE;
    (start < end).then_some(start..end)
}

/// Advises the whole pages of a large block to use huge pages; errors are
/// ignored (the advice is optional).
fn advise(ptr: *mut u8, size: usize) {
    #[cfg(target_os = "linux")]
    if let Some(pages) = advice_range(ptr as usize, size) {
        // SAFETY: the pages lie inside a block this process owns;
        // MADV_HUGEPAGE changes neither its contents nor its mapping.
        unsafe {
            libc::madvise(
                pages.start as *mut libc::c_void,
                pages.len(),
                libc::MADV_HUGEPAGE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, size);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_pages_of_large_blocks_are_advised() {
        let t = HUGE_PAGE_THRESHOLD;
        assert_eq!(advice_range(0x1000, t - 1), None);
        assert_eq!(advice_range(0, t), None);
        assert_eq!(advice_range(0x1000, t), Some(0x1000..0x1000 + t));
        // Unaligned ends are rounded inwards, never onto a neighbour's page.
        assert_eq!(advice_range(0x1010, t), Some(0x2000..0x1000 + t));
        assert_eq!(advice_range(0x1000, t + 100), Some(0x1000..0x1000 + t));
    }

    /// Whether the kernel marked the mapping that holds `addr` as advised
    /// for huge pages (`hg` in its `VmFlags` in `/proc/self/smaps`).
    #[cfg(target_os = "linux")]
    fn advised(addr: usize) -> bool {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'))
                .and_then(|(lo, hi)| {
                    Some(usize::from_str_radix(lo, 16).ok()?..usize::from_str_radix(hi, 16).ok()?)
                });
            if let Some(range) = range {
                inside = range.contains(&addr);
            } else if inside && line.starts_with("VmFlags:") {
                return line.split_whitespace().any(|flag| flag == "hg");
            }
        }
        false
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn large_blocks_are_advised_and_keep_their_contents() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            eprintln!("skipped: this kernel has no transparent huge pages");
            return;
        }
        let zeroed = Layout::from_size_align(3 * HUGE_PAGE_THRESHOLD, 64).unwrap();
        let first = Layout::from_size_align(1 << 20, 8).unwrap();
        let grown = 2 * HUGE_PAGE_THRESHOLD;
        unsafe {
            let z = HugePageAlloc.alloc_zeroed(zeroed);
            assert!(!z.is_null());
            assert!(advised(z as usize + zeroed.size() / 2));
            assert!(std::slice::from_raw_parts(z, zeroed.size())
                .iter()
                .all(|&b| b == 0));
            HugePageAlloc.dealloc(z, zeroed);

            // Grown past the threshold: advised, contents kept.
            let p = HugePageAlloc.alloc(first);
            for i in 0..first.size() {
                *p.add(i) = (i % 251) as u8;
            }
            let q = HugePageAlloc.realloc(p, first, grown);
            assert!(!q.is_null());
            assert!((0..first.size()).all(|i| *q.add(i) == (i % 251) as u8));
            assert!(advised(q as usize + grown / 2));
            HugePageAlloc.dealloc(q, Layout::from_size_align(grown, 8).unwrap());
        }
    }
}
