//! Embeds every file under web/ into the binary (no build step for the pages themselves).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, root, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push((rel.to_string_lossy().replace('\\', "/"), path.canonicalize()?));
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../web").canonicalize()?;
    let mut files = Vec::new();
    walk(&root, &root, &mut files)?;
    files.sort();
    let mut code =
        String::from("/// Every file under web/, by path relative to web/.\npub static FILES: &[(&str, &[u8])] = &[\n");
    for (rel, abs) in &files {
        writeln!(code, "    ({rel:?}, include_bytes!({:?})),", abs.display().to_string())?;
    }
    code.push_str("];\n");
    std::fs::write(PathBuf::from(std::env::var("OUT_DIR")?).join("web_files.rs"), code)?;
    // Relative to this package (cargo resolves them against the manifest dir): a target directory
    // copied from another checkout reruns this script for the files of *this* checkout, instead of
    // keeping the other checkout's absolute paths in its fingerprint.
    println!("cargo:rerun-if-changed=../../web");
    for (rel, _) in &files {
        println!("cargo:rerun-if-changed=../../web/{rel}");
    }
    Ok(())
}
