//! Deterministic slices of a sweep, so that it runs as a batch-scheduler job
//! array: shard `i` of `n` takes the runs at positions `p ≡ i (mod n)` of the
//! key-sorted expansion. Every run lands in exactly one shard, on any machine.

use anyhow::{bail, Context};

/// Shard `index` of `count` (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0 ≤ index < count`.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl Shard {
    /// The whole sweep.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Checked constructor.
    pub fn new(index: usize, count: usize) -> anyhow::Result<Shard> {
        if count == 0 {
            bail!("shard {index}/{count}: the number of shards must be at least 1");
        }
        if index >= count {
            bail!("shard {index}/{count}: the index must be below the number of shards (0-based: 0..{count})");
        }
        Ok(Shard { index, count })
    }

    /// Parses `I/N` (0-based `I`).
    pub fn parse(text: &str) -> anyhow::Result<Shard> {
        let (i, n) = text
            .split_once('/')
            .with_context(|| format!("shard `{text}`: expected I/N, e.g. 0/4"))?;
        let num = |s: &str| -> anyhow::Result<usize> {
            s.trim()
                .parse()
                .with_context(|| format!("shard `{text}`: `{s}` is not a non-negative integer"))
        };
        Shard::new(num(i)?, num(n)?)
    }

    /// The shard of a Slurm job array task, from `SLURM_ARRAY_TASK_ID`,
    /// `SLURM_ARRAY_TASK_COUNT` and (when the array does not start at 0)
    /// `SLURM_ARRAY_TASK_MIN`; `None` outside a job array. `env` looks a variable up.
    pub fn from_slurm(env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Shard>> {
        let Some(id) = env("SLURM_ARRAY_TASK_ID") else {
            return Ok(None);
        };
        let get = |name: &str, value: &str| -> anyhow::Result<usize> {
            value
                .trim()
                .parse()
                .with_context(|| format!("{name}=`{value}` is not a non-negative integer"))
        };
        let id = get("SLURM_ARRAY_TASK_ID", &id)?;
        let count = env("SLURM_ARRAY_TASK_COUNT")
            .context("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")?;
        let count = get("SLURM_ARRAY_TASK_COUNT", &count)?;
        let min = match env("SLURM_ARRAY_TASK_MIN") {
            Some(m) => get("SLURM_ARRAY_TASK_MIN", &m)?,
            None => 0,
        };
        let index = id.checked_sub(min).with_context(|| {
            format!("SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}")
        })?;
        Shard::new(index, count)
            .context("the Slurm array must be contiguous (e.g. --array=0-3)")
            .map(Some)
    }

    /// This shard's part of `items` (in their order).
    pub fn select<T>(&self, items: Vec<T>) -> Vec<T> {
        items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % self.count == self.index)
            .map(|(_, t)| t)
            .collect()
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_runs() {
        let items: Vec<usize> = (0..10).collect();
        let mut all: Vec<usize> = (0..3)
            .flat_map(|i| Shard::new(i, 3).unwrap().select(items.clone()))
            .collect();
        all.sort();
        assert_eq!(all, items);
        assert_eq!(Shard::parse("1/3").unwrap().select(items), vec![1, 4, 7]);
    }

    #[test]
    fn bad_shards_and_slurm_variables_are_named() {
        for (text, needle) in [
            ("3/2", "3/2"),
            ("0/0", "at least 1"),
            ("a/2", "`a`"),
            ("2", "expected I/N"),
        ] {
            let err = format!("{:#}", Shard::parse(text).unwrap_err());
            assert!(err.contains(needle), "{text}: {err}");
        }
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Shard::from_slurm(env(&[])).unwrap(), None);
        let s = Shard::from_slurm(env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ]))
        .unwrap();
        assert_eq!(s, Some(Shard { index: 2, count: 3 }));
        assert!(Shard::from_slurm(env(&[("SLURM_ARRAY_TASK_ID", "0")])).is_err());
    }
}
