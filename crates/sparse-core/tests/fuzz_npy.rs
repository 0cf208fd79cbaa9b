//! Grammar-aware fuzzing of the `.npy` reader: generated headers (format
//! versions, dtypes, orders, shapes up to overflow, header lengths past the
//! end) over payloads of any length. A file is accepted only when its
//! payload is exactly what the header declares, and reading never allocates
//! more than the bytes given plus a little, whatever the header claims.
//! (Random-byte fuzzing of the same reader runs in `io::npy`'s unit tests.)
//! Counts are quoted in docs/reliability.md; `PROPTEST_CASES` raises them.

#[path = "support/count_alloc.rs"]
mod count_alloc;

use proptest::prelude::*;
use sparse_core::io::read_npy_bytes;

#[global_allocator]
static ALLOC: count_alloc::Counting = count_alloc::Counting;

/// Cases in CI (quoted in docs/reliability.md).
const CASES: u32 = 1024;

#[derive(Debug, Clone)]
struct NpyFile {
    version: u8,
    descr: &'static str,
    fortran: &'static str,
    shape: Vec<u64>,
    header_len_delta: i64,
    payload: usize,
}

fn npy_file() -> impl Strategy<Value = NpyFile> {
    let dim = prop_oneof![
        0u64..6,
        Just(u64::MAX),
        Just(1 << 32),
        Just(1 << 62),
        Just(usize::MAX as u64 / 4 + 1),
        1u64..1 << 40,
    ];
    (
        prop_oneof![Just(1u8), Just(2), Just(3), Just(0), Just(4)],
        prop_oneof![
            Just("'<f4'"),
            Just("'<f8'"),
            Just("'>f4'"),
            Just("'<i4'"),
            Just("'|u1'"),
            Just("'<f4"),
            Just("<f4"),
        ],
        prop_oneof![Just("False"), Just("True"), Just("0")],
        prop::collection::vec(dim, 0..4),
        prop_oneof![
            Just(0i64),
            Just(0),
            -20i64..20,
            Just(1 << 20),
            Just(i32::MAX as i64)
        ],
        prop_oneof![0usize..200, Just(4 * 6), Just(8 * 6)],
    )
        .prop_map(
            |(version, descr, fortran, shape, header_len_delta, payload)| NpyFile {
                version,
                descr,
                fortran,
                shape,
                header_len_delta,
                payload,
            },
        )
}

impl NpyFile {
    fn bytes(&self) -> Vec<u8> {
        let shape: Vec<String> = self.shape.iter().map(u64::to_string).collect();
        let tuple = match shape.len() {
            1 => format!("({},)", shape[0]),
            _ => format!("({})", shape.join(", ")),
        };
        let header = format!(
            "{{'descr': {}, 'fortran_order': {}, 'shape': {tuple}, }}\n",
            self.descr, self.fortran
        );
        let len = (header.len() as i64 + self.header_len_delta).max(0) as u64;
        let mut out = b"\x93NUMPY".to_vec();
        out.extend_from_slice(&[self.version, 0]);
        if self.version == 1 {
            out.extend_from_slice(&(len.min(u16::MAX as u64) as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(len.min(u32::MAX as u64) as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend(std::iter::repeat_n(0u8, self.payload));
        out
    }

    /// Whether the file is exactly as the header says (and of a supported kind).
    fn consistent(&self) -> bool {
        let size = match self.descr {
            "'<f4'" => 4u64,
            "'<f8'" => 8,
            _ => return false,
        };
        let count = self.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        (1..=3).contains(&self.version)
            && self.fortran == "False"
            && (1..=2).contains(&self.shape.len())
            && count.and_then(|c| c.checked_mul(size)) == Some(self.payload as u64)
            && count.is_some_and(|c| c <= usize::MAX as u64)
    }
}

proptest! {
    #![proptest_config(count_alloc::fuzz_config(CASES))]

    #[test]
    fn generated_headers_are_checked_before_allocating(file in npy_file()) {
        let bytes = file.bytes();
        let (result, peak) = count_alloc::bounded(1 << 20, || read_npy_bytes(&bytes));
        prop_assert!(peak <= 2 * bytes.len() + 4096, "{file:?}: peak {peak}");
        // A header length off by a few bytes moves the data's start: the
        // file may then still be self-consistent, so only exact lengths have
        // an oracle.
        if file.header_len_delta != 0 {
            return Ok(());
        }
        match result {
            Ok(m) => {
                prop_assert!(file.consistent(), "{file:?} accepted");
                prop_assert_eq!(m.as_slice().len() as u64 * if file.descr == "'<f8'" { 8 } else { 4 }, file.payload as u64);
            }
            Err(reason) => prop_assert!(!file.consistent(), "{file:?} refused: {reason}"),
        }
    }
}
