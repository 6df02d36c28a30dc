//! The recordings volume: how much room is left, and what a failed write means.

use std::path::Path;

/// A volume with less free space than this is full for the purpose of explaining a failed write.
const NEARLY_FULL: u64 = 1024 * 1024;

/// Bytes an unprivileged writer may still use on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(s.blocks_available().saturating_mul(s.fragment_size()))
}

/// The catalog's reason for a write that failed in `dir`: a full volume is named as such (libwebm
/// reports only that a write failed, not why).
pub fn write_failure(error: &dyn std::fmt::Display, dir: &Path) -> String {
    match free_bytes(dir) {
        Ok(free) if free < NEARLY_FULL => format!("the recordings volume is full ({error})"),
        _ => format!("write failed: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temp_dir_has_room_and_a_missing_dir_is_an_error() {
        assert!(free_bytes(&std::env::temp_dir()).unwrap() > 0);
        assert!(free_bytes(Path::new("/nonexistent/onair")).is_err());
        assert!(write_failure(&"x", &std::env::temp_dir()).starts_with("write failed"));
    }
}
