//! Build script: embeds the PGlite assets and computes their cache keys at build time, so a
//! process never has to read and hash the 9 MB wasm at run time just to find its compiled form.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let assets = manifest_dir.join("assets");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());

    let wasm = assets.join("pglite.wasm");
    println!("cargo::rerun-if-changed={}", wasm.display());
    println!("cargo::rerun-if-changed={}", assets.join("extensions").display());

    let mut code = String::new();
    writeln!(
        code,
        "/// sha256 of `assets/pglite.wasm`, computed at build time."
    )
    .unwrap();
    writeln!(
        code,
        "pub const PGLITE_WASM_SHA256: &str = {:?};",
        sha256_hex(&wasm)
    )
    .unwrap();

    let mut bundles: Vec<PathBuf> = std::fs::read_dir(assets.join("extensions"))
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    bundles.retain(|p| p.to_string_lossy().ends_with(".tar.gz"));
    bundles.sort();
    writeln!(
        code,
        "/// The extension bundles of the npm package, by bundle name."
    )
    .unwrap();
    writeln!(code, "pub static EXTENSION_BUNDLES: &[(&str, &[u8])] = &[").unwrap();
    for bundle in &bundles {
        let file = bundle.file_name().unwrap().to_string_lossy();
        let name = file.trim_end_matches(".tar.gz");
        writeln!(
            code,
            "    ({name:?}, include_bytes!({:?})),",
            bundle.display().to_string()
        )
        .unwrap();
    }
    writeln!(code, "];").unwrap();
    std::fs::write(out.join("embedded_assets.rs"), code).unwrap();
}

fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e} (run assets/refresh.sh)", path.display()));
    Sha256::digest(&bytes).iter().fold(String::new(), |mut s, b| {
        write!(s, "{b:02x}").unwrap();
        s
    })
}
