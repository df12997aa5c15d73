//! Where an instance keeps its data: in memory, or in a host directory that is locked while open
//! and populated from the template PGDATA when new.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::BackendError;
use crate::assets;

/// The name of the lock file kept inside an open data directory.
pub const LOCK_FILE: &str = ".pglite-harness.lock";

/// Where an instance's PGDATA lives, following PGlite's rule: `memory://` (or nothing) is in
/// memory, a path or `file://` URL is a directory on disk, created if missing.
///
/// ```
/// use pglite_harness::DataDir;
/// assert_eq!(DataDir::parse("memory://"), DataDir::Memory);
/// assert_eq!(DataDir::parse("file:///tmp/db"), DataDir::Path("/tmp/db".into()));
/// assert_eq!(DataDir::parse("./data/app"), DataDir::Path("./data/app".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DataDir {
    /// PGDATA in the instance's in-memory filesystem; gone when the instance closes.
    #[default]
    Memory,
    /// PGDATA in this host directory; kept across restarts and crashes.
    Path(PathBuf),
}

impl DataDir {
    /// Parses PGlite's `dataDir` notation.
    ///
    /// ```
    /// use pglite_harness::DataDir;
    ///
    /// assert_eq!(DataDir::parse(""), DataDir::Memory);
    /// assert_eq!(DataDir::parse("file://./data/app"), DataDir::Path("./data/app".into()));
    /// ```
    pub fn parse(spec: &str) -> DataDir {
        match spec {
            "" | "memory://" => DataDir::Memory,
            _ => match spec.strip_prefix("file://") {
                Some(path) => DataDir::Path(PathBuf::from(path)),
                None => DataDir::Path(PathBuf::from(spec)),
            },
        }
    }
}

impl From<&str> for DataDir {
    fn from(spec: &str) -> Self {
        DataDir::parse(spec)
    }
}

impl From<PathBuf> for DataDir {
    fn from(path: PathBuf) -> Self {
        DataDir::Path(path)
    }
}

impl From<&Path> for DataDir {
    fn from(path: &Path) -> Self {
        DataDir::Path(path.to_owned())
    }
}

/// An exclusive lock on a data directory, held while a backend has it open. It is an advisory
/// `flock` on [`LOCK_FILE`], so it is released by the OS when the process dies.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
}

/// Creates `dir` if needed, locks it, and fills it from the template if it holds no cluster.
pub(crate) fn prepare(dir: &Path) -> Result<DataDirLock, BackendError> {
    let io = |what: &str, source: io::Error| BackendError::DataDir {
        path: dir.to_owned(),
        reason: format!("{what}: {source}"),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("cannot create it", e))?;
    let lock_path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| io("cannot open its lock file", e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(BackendError::DataDirLocked { path: dir.to_owned() });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io("cannot lock it", e)),
    }
    let lock = DataDirLock { _file: file };

    if !dir.join("PG_VERSION").exists() {
        let foreign: Vec<String> = fs::read_dir(dir)
            .map_err(|e| io("cannot list it", e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != LOCK_FILE && name != POPULATING_MARKER && !is_template_entry(name))
            .collect();
        if !foreign.is_empty() {
            return Err(BackendError::DataDir {
                path: dir.to_owned(),
                reason: format!(
                    "it is neither empty nor a PostgreSQL data directory (no PG_VERSION; found {})",
                    foreign.join(", ")
                ),
            });
        }
        populate(dir).map_err(|e| io("cannot write the initial database into it", e))?;
    }
    Ok(lock)
}

/// Present while [`populate`] runs: a directory with it and without PG_VERSION is an interrupted
/// population and is redone.
const POPULATING_MARKER: &str = ".pglite-harness.populating";

fn is_template_entry(name: &str) -> bool {
    assets::pgdata_template().dirs.iter().any(|(d, _)| d == name)
        || assets::pgdata_template().files.iter().any(|f| f.path == name)
}

/// Writes the template cluster into `dir`. `PG_VERSION` is written last, so an interrupted copy is
/// recognised (no PG_VERSION) and redone on the next open.
fn populate(dir: &Path) -> io::Result<()> {
    File::create(dir.join(POPULATING_MARKER))?;
    let template = assets::pgdata_template();
    for (path, _) in &template.dirs {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join(path))?;
    }
    let mut version = None;
    for file in &template.files {
        if file.path == "PG_VERSION" {
            version = Some(file);
            continue;
        }
        write_file(&dir.join(&file.path), &file.data)?;
    }
    let version =
        version.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "template has no PG_VERSION"))?;
    write_file(&dir.join("PG_VERSION"), &version.data)?;
    File::open(dir)?.sync_all()?;
    fs::remove_file(dir.join(POPULATING_MARKER))
}

fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)?;
    file.sync_all()
}
