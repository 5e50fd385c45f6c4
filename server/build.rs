//! Embeds every `migrations/*.sql` file, in name order, so the binary carries
//! its schema and a new migration needs no code change.

use std::{env, fs, path::PathBuf};

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("migrations/ directory")
        .map(|entry| entry.expect("migrations entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    files.sort();
    let mut code = String::from("&[\n");
    for path in files {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path.file_stem().unwrap().to_string_lossy();
        let abs = path.canonicalize().unwrap();
        code.push_str(&format!(
            "    Migration {{ name: {name:?}, sql: include_str!({:?}) }},\n",
            abs.display().to_string()
        ));
    }
    code.push(']');
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("migrations.rs");
    fs::write(out, code).unwrap();
}
