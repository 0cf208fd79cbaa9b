//! Reading and writing arrays on disk, validated before any large allocation.

pub mod atomic;
pub mod npy;

pub use atomic::write_atomic;
pub use npy::{read_npy, read_npy_bytes, write_npy, NpyDtype};
