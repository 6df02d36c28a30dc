//! Embeds every file under web/ into the binary (no build step for the pages themselves).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, root, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
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
    // Paths relative to the crate being compiled, not this script's absolute ones: a target
    // directory shared by several checkouts (CI clones) may keep this script's output from another
    // checkout (its files can be newer than this one's), and must still embed *this* checkout's files.
    for rel in &files {
        let path = format!("/../../web/{rel}");
        writeln!(code, "    ({rel:?}, include_bytes!(concat!(env!(\"CARGO_MANIFEST_DIR\"), {path:?}))),")?;
    }
    code.push_str("];\n");
    std::fs::write(PathBuf::from(std::env::var("OUT_DIR")?).join("web_files.rs"), code)?;
    // Relative to this package (cargo resolves them against the manifest dir), like the paths above.
    println!("cargo:rerun-if-changed=../../web");
    for rel in &files {
        println!("cargo:rerun-if-changed=../../web/{rel}");
    }
    Ok(())
}
