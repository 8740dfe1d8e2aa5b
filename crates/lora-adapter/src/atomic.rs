//! Directories that appear whole or not at all.

use std::path::{Path, PathBuf};

use crate::error::LoraError;

/// Fills a temporary sibling of `dir` with `fill`, then renames it into place, so a crash
/// never leaves a half-written adapter or checkpoint behind. An existing `dir` is replaced.
pub fn write_dir_atomically<E: From<LoraError>>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let name = dir
        .file_name()
        .ok_or_else(|| E::from(LoraError::io(dir, std::io::Error::other("not a directory name"))))?
        .to_string_lossy()
        .into_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| E::from(LoraError::io(&parent, e)))?;
    let temp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if temp.exists() {
        std::fs::remove_dir_all(&temp).map_err(|e| E::from(LoraError::io(&temp, e)))?;
    }
    std::fs::create_dir(&temp).map_err(|e| E::from(LoraError::io(&temp, e)))?;
    if let Err(e) = fill(&temp) {
        let _ = std::fs::remove_dir_all(&temp);
        return Err(e);
    }
    if dir.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(dir, &old).map_err(|e| E::from(LoraError::io(dir, e)))?;
        std::fs::rename(&temp, dir).map_err(|e| E::from(LoraError::io(dir, e)))?;
        std::fs::remove_dir_all(&old).map_err(|e| E::from(LoraError::io(&old, e)))?;
    } else {
        std::fs::rename(&temp, dir).map_err(|e| E::from(LoraError::io(dir, e)))?;
    }
    Ok(())
}
