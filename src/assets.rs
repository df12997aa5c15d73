//! The PGlite files of the npm package `@electric-sql/pglite` 0.5.16, embedded in the binary.
//!
//! Nothing is downloaded at build time or run time: `assets/` holds the files byte for byte (see
//! `assets/README.md` for their checksums and `assets/refresh.sh` for how they are re-derived).

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

include!(concat!(env!("OUT_DIR"), "/embedded_assets.rs"));

/// The PostgreSQL backend compiled to WebAssembly (`dist/pglite.wasm`).
pub static PGLITE_WASM: &[u8] = include_bytes!("../assets/pglite.wasm");

/// The Emscripten file-packager blob with share/, lib/ and ICU data (`dist/pglite.data`).
static PGLITE_DATA: &[u8] = include_bytes!("../assets/pglite.data");

/// Where each file of [`PGLITE_DATA`] lives in the virtual filesystem.
static PGLITE_DATA_MANIFEST: &str = include_str!("../assets/pglite-data-manifest.json");

/// A cleanly shut down PGDATA made by PGlite's own initdb (UTF8, C.UTF-8, trust), as tar.gz.
static PGDATA_TEMPLATE: &[u8] = include_bytes!("../assets/pgdata-template.tar.gz");

/// One file to place in the virtual filesystem.
#[derive(Clone, Debug)]
pub(crate) struct AssetFile {
    /// Absolute path in the virtual filesystem, or relative to a tree's root for archives.
    pub path: String,
    /// File contents.
    pub data: Arc<[u8]>,
    /// Permission bits.
    pub mode: u32,
}

/// A directory tree read from an embedded asset.
#[derive(Clone, Debug, Default)]
pub(crate) struct AssetTree {
    /// Directories, parents before children.
    pub dirs: Vec<(String, u32)>,
    /// Regular files.
    pub files: Vec<AssetFile>,
}

#[derive(Deserialize)]
struct Manifest {
    remote_package_size: usize,
    dirs: Vec<String>,
    files: Vec<ManifestFile>,
}

#[derive(Deserialize)]
struct ManifestFile {
    filename: String,
    start: usize,
    end: usize,
}

/// The files of `pglite.data` (share/, lib/, icu/, fake executables, helper files).
pub(crate) fn pglite_data_tree() -> &'static AssetTree {
    static TREE: OnceLock<AssetTree> = OnceLock::new();
    TREE.get_or_init(|| {
        let manifest: Manifest = serde_json::from_str(PGLITE_DATA_MANIFEST)
            .expect("the embedded pglite.data manifest is valid JSON");
        assert_eq!(
            manifest.remote_package_size,
            PGLITE_DATA.len(),
            "pglite.data size"
        );
        let mut tree = AssetTree {
            dirs: manifest.dirs.into_iter().map(|d| (d, 0o777)).collect(),
            ..AssetTree::default()
        };
        for file in manifest.files {
            let mode = match file.filename.as_str() {
                // What the official client chmods after loading the package (§3.1 step 8).
                "/home/postgres/.pgpass" => 0o600,
                "/pglite/bin/initdb" | "/pglite/bin/postgres" => 0o555,
                _ => 0o777,
            };
            tree.files.push(AssetFile {
                path: file.filename,
                data: Arc::from(&PGLITE_DATA[file.start..file.end]),
                mode,
            });
        }
        tree
    })
}

/// The template PGDATA, paths relative to the data directory.
pub(crate) fn pgdata_template() -> &'static AssetTree {
    static TREE: OnceLock<AssetTree> = OnceLock::new();
    TREE.get_or_init(|| read_tar_gz(PGDATA_TEMPLATE).expect("the embedded PGDATA template is a valid tar.gz"))
}

/// Names of the extension bundles shipped with the package (`hstore`, `pg_trgm`, ...).
pub fn extension_bundle_names() -> impl Iterator<Item = &'static str> {
    EXTENSION_BUNDLES.iter().map(|(name, _)| *name)
}

/// The unpacked files of one extension bundle, paths relative to `/pglite`.
pub(crate) fn extension_bundle(name: &str) -> Option<&'static AssetTree> {
    static TREES: OnceLock<BTreeMap<&'static str, OnceLock<AssetTree>>> = OnceLock::new();
    let trees = TREES.get_or_init(|| {
        EXTENSION_BUNDLES
            .iter()
            .map(|(name, _)| (*name, OnceLock::new()))
            .collect()
    });
    let slot = trees.get(name)?;
    let bytes = EXTENSION_BUNDLES.iter().find(|(n, _)| *n == name)?.1;
    Some(slot.get_or_init(|| read_tar_gz(bytes).expect("an embedded extension bundle is a valid tar.gz")))
}

/// Reads a gzip-compressed ustar archive into memory. Paths lose any leading `./` or `/`.
pub(crate) fn read_tar_gz(bytes: &[u8]) -> std::io::Result<AssetTree> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut tree = AssetTree::default();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_start_matches('/')
            .trim_end_matches('/');
        if path.is_empty() || path == "." {
            continue;
        }
        let path = path.to_owned();
        let mode = entry.header().mode()? & 0o7777;
        match entry.header().entry_type() {
            tar::EntryType::Directory => tree.dirs.push((path, mode)),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut data)?;
                tree.files.push(AssetFile {
                    path,
                    data: Arc::from(data),
                    mode,
                });
            }
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unsupported tar entry type {other:?} for {path}"),
                ));
            }
        }
    }
    Ok(tree)
}
