//! `.npy` files (format versions 1.0–3.0): little-endian `f32`/`f64`, C order,
//! one or two dimensions. Headers are parsed strictly and the declared size is
//! checked against the file size before the data is read.

use crate::error::{Error, Result};
use crate::matrix::Matrix;
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";
/// Headers longer than this are rejected (numpy itself writes < 200 bytes).
const MAX_HEADER_LEN: usize = 1 << 16;

/// Element type of an `.npy` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyDtype {
    /// `<f4`
    F32,
    /// `<f8`
    F64,
}

impl NpyDtype {
    fn descr(self) -> &'static str {
        match self {
            NpyDtype::F32 => "<f4",
            NpyDtype::F64 => "<f8",
        }
    }
    fn size(self) -> usize {
        match self {
            NpyDtype::F32 => 4,
            NpyDtype::F64 => 8,
        }
    }
}

/// Reads a 2-D (or 1-D, as one row) `.npy` file of `<f4` or `<f8` into a
/// [`Matrix`] (f64 values are rounded to f32).
pub fn read_npy(path: &Path) -> Result<Matrix> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_npy_bytes(&bytes).map_err(|reason| Error::Format {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parses `.npy` bytes; the error is a sentence saying what is wrong.
pub fn read_npy_bytes(bytes: &[u8]) -> std::result::Result<Matrix, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (missing the \\x93NUMPY magic)".into());
    }
    let major = bytes[6];
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    if header_len > MAX_HEADER_LEN {
        return Err(format!("header length {header_len} is implausibly large"));
    }
    let data_start = header_start + header_len;
    if bytes.len() < data_start {
        return Err(format!(
            "truncated: header claims {header_len} bytes, file has {}",
            bytes.len() - header_start
        ));
    }
    let header = std::str::from_utf8(&bytes[header_start..data_start])
        .map_err(|_| "header is not valid text".to_string())?;
    let descr = dict_value(header, "descr")?.trim();
    let quoted = |q: char| descr.strip_prefix(q).and_then(|d| d.strip_suffix(q));
    let unquoted = quoted('\'')
        .or_else(|| quoted('"'))
        .ok_or_else(|| format!("dtype {descr} is not a quoted string"))?;
    let dtype = match unquoted {
        "<f4" => NpyDtype::F32,
        "<f8" => NpyDtype::F64,
        other => {
            return Err(format!(
                "dtype {other} is not supported (expected little-endian float32 '<f4' or float64 '<f8')"
            ))
        }
    };
    match dict_value(header, "fortran_order")?.trim() {
        "False" => {}
        "True" => return Err("Fortran-order arrays are not supported (save in C order)".into()),
        other => return Err(format!("fortran_order has unexpected value {other}")),
    }
    let shape = parse_shape(dict_value(header, "shape")?)?;
    let (rows, cols) = match shape.as_slice() {
        [n] => (1, *n),
        [r, c] => (*r, *c),
        s => {
            return Err(format!(
                "expected a 1-D or 2-D array, found {}-D shape {s:?}",
                s.len()
            ))
        }
    };
    let count = rows
        .checked_mul(cols)
        .ok_or_else(|| format!("shape ({rows}, {cols}) overflows"))?;
    let nbytes = count
        .checked_mul(dtype.size())
        .ok_or_else(|| format!("shape ({rows}, {cols}) overflows"))?;
    let payload = &bytes[data_start..];
    if payload.len() != nbytes {
        return Err(format!(
            "{} data: shape ({rows}, {cols}) needs {nbytes} bytes, file holds {}",
            if payload.len() < nbytes {
                "truncated"
            } else {
                "trailing"
            },
            payload.len()
        ));
    }
    let data: Vec<f32> = match dtype {
        NpyDtype::F32 => payload
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        NpyDtype::F64 => payload
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")) as f32)
            .collect(),
    };
    Matrix::from_vec(rows, cols, data).map_err(|e| e.to_string())
}

/// The raw text of `key`'s value in a Python dict literal header.
fn dict_value<'a>(header: &'a str, key: &str) -> std::result::Result<&'a str, String> {
    let pat_single = format!("'{key}'");
    let pat_double = format!("\"{key}\"");
    let start = header
        .find(&pat_single)
        .or_else(|| header.find(&pat_double))
        .ok_or_else(|| format!("header has no '{key}' entry"))?
        + key.len()
        + 2;
    let rest = header[start..].trim_start();
    let rest = rest
        .strip_prefix(':')
        .ok_or_else(|| format!("header entry '{key}' is malformed"))?
        .trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|i| i + 1)
    } else {
        rest.find([',', '}'])
    }
    .ok_or_else(|| format!("header entry '{key}' is malformed"))?;
    Ok(&rest[..end])
}

fn parse_shape(s: &str) -> std::result::Result<Vec<usize>, String> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("shape {s} is not a tuple"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<usize>()
                .map_err(|_| format!("shape entry '{t}' is not a size"))
        })
        .collect()
}

/// Encodes a matrix as `.npy` (format 1.0, C order) in the given dtype.
pub fn npy_bytes(m: &Matrix, dtype: NpyDtype) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({}, {}), }}",
        dtype.descr(),
        m.rows(),
        m.cols()
    );
    // Pad so that the data starts on a 64-byte boundary, ending with '\n'.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + m.as_slice().len() * dtype.size());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for &v in m.as_slice() {
        match dtype {
            NpyDtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
            NpyDtype::F64 => out.extend_from_slice(&(v as f64).to_le_bytes()),
        }
    }
    out
}

/// Writes a matrix to `path` as `.npy` in the given dtype, atomically.
pub fn write_npy(path: &Path, m: &Matrix, dtype: NpyDtype) -> Result<()> {
    super::write_atomic(path, &npy_bytes(m, dtype))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_f32_and_f64() {
        let m = Matrix::from_fn(3, 5, |i, j| i as f32 * 10.0 + j as f32 - 0.25);
        for dt in [NpyDtype::F32, NpyDtype::F64] {
            let bytes = npy_bytes(&m, dt);
            assert_eq!((bytes.len() - 15 * dt.size()) % 64, 0);
            assert_eq!(read_npy_bytes(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn reads_numpy_written_header() {
        // Bytes as numpy 1.26 writes np.arange(6, dtype='<f4').reshape(2, 3).
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut h = header.to_string();
        h.push_str(&" ".repeat(118 - header.len() - 1));
        h.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        for v in 0..6 {
            bytes.extend_from_slice(&(v as f32).to_le_bytes());
        }
        let m = read_npy_bytes(&bytes).unwrap();
        assert_eq!(m.shape(), (2, 3));
        assert_eq!(m.get(1, 2), 5.0);
    }

    #[test]
    fn rejects_bad_files_with_reasons() {
        let good = npy_bytes(&Matrix::zeros(4, 4), NpyDtype::F32);
        let e = read_npy_bytes(&good[..good.len() - 3]).unwrap_err();
        assert!(e.contains("truncated") && e.contains("(4, 4)"), "{e}");
        assert!(read_npy_bytes(b"hello world, not numpy")
            .unwrap_err()
            .contains("not a .npy"));
        let e =
            read_npy_bytes(&replace(&good, "(4, 4)", "(99999999999, 99999999999)")).unwrap_err();
        assert!(e.contains("overflows") || e.contains("needs"), "{e}");
        let e = read_npy_bytes(&replace(&good, "(4, 4)", "(4, 4, 4)")).unwrap_err();
        assert!(e.contains("3-D"), "{e}");
        assert!(read_npy_bytes(&replace(&good, "<f4", "<i4"))
            .unwrap_err()
            .contains("<i4"));
        assert!(read_npy_bytes(&replace(&good, "False", "True "))
            .unwrap_err()
            .contains("Fortran"));
    }

    /// `bytes` with the first occurrence of `from` replaced by `to` (header edits in tests).
    fn replace(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
        let pos = bytes
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .unwrap();
        let mut out = bytes[..pos].to_vec();
        out.extend_from_slice(to.as_bytes());
        out.extend_from_slice(&bytes[pos + from.len()..]);
        out
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = read_npy_bytes(&bytes);
        }

        #[test]
        fn mutated_valid_files_never_panic(pos in 0usize..200, byte in any::<u8>(), cut in 0usize..200) {
            let mut b = npy_bytes(&Matrix::from_fn(3, 7, |i, j| (i + j) as f32), NpyDtype::F32);
            let p = pos % b.len();
            b[p] = byte;
            b.truncate(b.len() - cut % b.len());
            let _ = read_npy_bytes(&b);
        }
    }
}
