//! The results store: one embedded SQLite file (WAL journal). Each finished run
//! is one row written in its own transaction, keyed by its run key (UNIQUE),
//! so a killed sweep leaves only whole runs and a restart skips them.

use crate::config::RunSpec;
use anyhow::{bail, Context};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The schema this code reads and writes.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT PRIMARY KEY,
    sweep TEXT NOT NULL,
    dictionary TEXT NOT NULL,
    kind TEXT NOT NULL,
    n_latents INTEGER NOT NULL,
    dim INTEGER NOT NULL,
    k INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    noise_std REAL NOT NULL,
    seed INTEGER NOT NULL,
    config_json TEXT NOT NULL,
    code_mcc REAL,
    dictionary_mcc REAL,
    train_flops REAL,
    inference_flops REAL,
    result_json TEXT NOT NULL,
    wall_seconds REAL NOT NULL,
    version TEXT NOT NULL,
    finished_unix INTEGER NOT NULL
);
";

/// What one run produced (everything but its spec).
#[derive(Clone, Debug, PartialEq)]
pub struct RunOutcome {
    /// Test code MCC.
    pub code_mcc: f64,
    /// Dictionary MCC (Pearson on atoms); `None` with a known dictionary.
    pub dictionary_mcc: Option<f64>,
    /// Training FLOPs (to the selected step).
    pub train_flops: f64,
    /// Inference FLOPs on the test split.
    pub inference_flops: f64,
    /// The study's full record of the run (metric curve over training, selected
    /// step, reconstruction, ...) as JSON, wall-clock times removed so that it is
    /// a pure function of the spec.
    pub result_json: String,
    /// Wall-clock seconds.
    pub wall_seconds: f64,
}

/// One row of the store.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRun {
    /// Run key.
    pub run_key: String,
    /// Name of the sweep that ran it.
    pub sweep: String,
    /// The spec's canonical JSON.
    pub config_json: String,
    /// The spec.
    pub spec: RunSpec,
    /// The outcome.
    pub outcome: RunOutcome,
    /// sparse-infer version that ran it.
    pub version: String,
    /// When it finished (Unix seconds).
    pub finished_unix: i64,
}

/// An open store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// What [`Store::merge_from`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MergeSummary {
    /// Rows copied in.
    pub inserted: usize,
    /// Rows already present with the same results.
    pub identical: usize,
    /// Keys present in both with different results (the existing row is kept).
    pub conflicts: Vec<String>,
}

impl Store {
    /// Opens the store at `path`, creating it (and its folder) when `create`;
    /// otherwise a missing file is an error. Errors name the file.
    pub fn open(path: &Path, create: bool) -> anyhow::Result<Store> {
        if !create && !path.is_file() {
            bail!("results store {} does not exist", path.display());
        }
        if create {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        let conn = Connection::open(path)
            .with_context(|| format!("opening results store {}", path.display()))?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store
            .init(create)
            .with_context(|| format!("{}: not a usable results store", path.display()))?;
        Ok(store)
    }

    fn init(&self, create: bool) -> anyhow::Result<()> {
        // WAL: a killed writer never corrupts the file; readers never block the writer.
        self.conn.busy_timeout(std::time::Duration::from_secs(60))?;
        self.conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))?;
        self.conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
        let has_meta: bool = self.conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type='table' AND name='meta'",
            [],
            |r| r.get(0),
        )?;
        if !has_meta {
            if !create {
                bail!("it has no sparse-infer tables");
            }
            self.conn.execute_batch(&format!(
                "BEGIN; {SCHEMA} INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'); COMMIT;"
            ))?;
        }
        let version: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key='schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        match version.as_deref().map(str::parse::<i64>) {
            Some(Ok(SCHEMA_VERSION)) => Ok(()),
            Some(Ok(v)) => {
                bail!("schema version {v}; this sparse-infer reads version {SCHEMA_VERSION}")
            }
            _ => bail!("no valid schema version"),
        }
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keys of the runs already stored.
    pub fn done_keys(&self) -> anyhow::Result<HashSet<String>> {
        let mut stmt = self.conn.prepare("SELECT run_key FROM runs")?;
        let keys = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<HashSet<String>, _>>()?;
        Ok(keys)
    }

    /// Records one finished run in its own transaction; a run already stored is
    /// left as it is (returns false).
    pub fn insert(
        &mut self,
        sweep: &str,
        spec: &RunSpec,
        outcome: &RunOutcome,
    ) -> anyhow::Result<bool> {
        let row = StoredRun {
            run_key: spec.key(),
            sweep: sweep.to_string(),
            config_json: spec.canonical_json(),
            spec: spec.clone(),
            outcome: outcome.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            finished_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        };
        let tx = self.conn.transaction()?;
        let inserted = insert_row(&tx, &row)?;
        tx.commit()?;
        Ok(inserted)
    }

    /// Every stored run, by run key.
    pub fn runs(&self) -> anyhow::Result<Vec<StoredRun>> {
        let mut stmt = self.conn.prepare(
            "SELECT run_key, sweep, config_json, code_mcc, dictionary_mcc, train_flops, inference_flops,
                    result_json, wall_seconds, version, finished_unix FROM runs ORDER BY run_key",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                RunOutcome {
                    code_mcc: r.get::<_, Option<f64>>(3)?.unwrap_or(f64::NAN),
                    dictionary_mcc: r.get(4)?,
                    train_flops: r.get::<_, Option<f64>>(5)?.unwrap_or(f64::NAN),
                    inference_flops: r.get::<_, Option<f64>>(6)?.unwrap_or(f64::NAN),
                    result_json: r.get(7)?,
                    wall_seconds: r.get(8)?,
                },
                r.get::<_, String>(9)?,
                r.get::<_, i64>(10)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (run_key, sweep, config_json, outcome, version, finished_unix) = row?;
            let spec: RunSpec = serde_json::from_str(&config_json)
                .with_context(|| format!("run {run_key}: unreadable config_json"))?;
            out.push(StoredRun {
                run_key,
                sweep,
                config_json,
                spec,
                outcome,
                version,
                finished_unix,
            });
        }
        Ok(out)
    }

    /// Copies every run of the store at `other` that this one lacks (one
    /// transaction). A key present in both with different results is a conflict:
    /// the existing row is kept and the key reported.
    pub fn merge_from(&mut self, other: &Path) -> anyhow::Result<MergeSummary> {
        let source = Store::open(other, false)?;
        let theirs = source.runs()?;
        drop(source);
        let tx = self.conn.transaction()?;
        let mut summary = MergeSummary::default();
        for row in &theirs {
            let existing: Option<(String, String)> = tx
                .query_row(
                    "SELECT config_json, result_json FROM runs WHERE run_key = ?1",
                    [&row.run_key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match existing {
                None => {
                    insert_row(&tx, row)?;
                    summary.inserted += 1;
                }
                Some((config, result))
                    if config == row.config_json && result == row.outcome.result_json =>
                {
                    summary.identical += 1
                }
                Some(_) => summary.conflicts.push(row.run_key.clone()),
            }
        }
        tx.commit()?;
        Ok(summary)
    }
}

fn insert_row(conn: &Connection, row: &StoredRun) -> anyhow::Result<bool> {
    let d = &row.spec.data;
    let o = &row.outcome;
    let n = conn.execute(
        "INSERT OR IGNORE INTO runs (run_key, sweep, dictionary, kind, n_latents, dim, k, samples, noise_std, seed,
             config_json, code_mcc, dictionary_mcc, train_flops, inference_flops, result_json, wall_seconds,
             version, finished_unix)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        params![
            row.run_key,
            row.sweep,
            d.dictionary.as_str(),
            row.spec.method.kind().as_str(),
            d.n_latents as i64,
            d.dim as i64,
            d.k as i64,
            d.samples as i64,
            d.noise_std,
            d.seed as i64,
            row.config_json,
            o.code_mcc,
            o.dictionary_mcc,
            o.train_flops,
            o.inference_flops,
            o.result_json,
            o.wall_seconds,
            row.version,
            row.finished_unix,
        ],
    )?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SweepConfig;

    fn spec(seed: u64) -> RunSpec {
        let text = format!(
            "name = \"t\"\n[[data]]\nn_latents = [8]\ndim = [4]\nk = [2]\nseeds = [{seed}]\n[[method]]\nkind = \"sae\"\nsteps = [3]\n"
        );
        SweepConfig::from_toml(&text)
            .unwrap()
            .expand()
            .unwrap()
            .remove(0)
    }

    fn outcome(mcc: f64) -> RunOutcome {
        RunOutcome {
            code_mcc: mcc,
            dictionary_mcc: Some(0.5),
            train_flops: 1e6,
            inference_flops: 1e3,
            result_json: format!("{{\"mcc\":{mcc}}}"),
            wall_seconds: 0.1,
        }
    }

    #[test]
    fn insert_is_unique_and_merge_reports_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let a_path = dir.path().join("sub/a.sqlite");
        let mut a = Store::open(&a_path, true).unwrap();
        assert!(a.insert("t", &spec(1), &outcome(0.5)).unwrap());
        assert!(
            !a.insert("t", &spec(1), &outcome(0.9)).unwrap(),
            "no duplicate"
        );
        assert_eq!(a.runs().unwrap().len(), 1);
        assert_eq!(a.runs().unwrap()[0].outcome, outcome(0.5));
        assert_eq!(a.runs().unwrap()[0].spec, spec(1));

        let b_path = dir.path().join("b.sqlite");
        let mut b = Store::open(&b_path, true).unwrap();
        b.insert("t", &spec(1), &outcome(0.7)).unwrap(); // conflicting result
        b.insert("t", &spec(2), &outcome(0.6)).unwrap();
        drop(b);
        let summary = a.merge_from(&b_path).unwrap();
        assert_eq!(summary.inserted, 1);
        assert_eq!(summary.conflicts, vec![spec(1).key()]);
        assert_eq!(a.runs().unwrap().len(), 2);
        let again = a.merge_from(&b_path).unwrap();
        assert_eq!((again.inserted, again.identical), (0, 1));
    }

    #[test]
    fn missing_and_corrupt_stores_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sqlite");
        let err = format!("{:#}", Store::open(&missing, false).err().unwrap());
        assert!(
            err.contains("none.sqlite") && err.contains("does not exist"),
            "{err}"
        );
        assert!(!missing.exists());
        let corrupt = dir.path().join("corrupt.sqlite");
        std::fs::write(&corrupt, vec![b'x'; 4096]).unwrap();
        for create in [false, true] {
            let err = format!("{:#}", Store::open(&corrupt, create).err().unwrap());
            assert!(err.contains("corrupt.sqlite"), "{err}");
        }
    }
}
