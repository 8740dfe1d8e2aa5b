//! Directories and files that appear whole or not at all, and stay written after a crash or a
//! power cut: everything is written under a temporary name beside its target, fsynced (files,
//! then the directory), renamed into place, and the parent directory fsynced.
//!
//! Temporary names carry the writer's process id (`.NAME.partial-PID`, `.NAME.old-PID`), so
//! that a later writer can tell the leftovers of a killed process from a live one's work
//! ([`clean_stale_writes`]).

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::LoraError;

/// Fills a temporary sibling of `dir` with `fill`, makes it durable, then moves it into place,
/// so a crash never leaves a half-written adapter or checkpoint behind. An existing `dir` is
/// replaced by swapping the two in one step (Linux's `RENAME_EXCHANGE`), so there is no moment
/// when neither the old nor the new directory is in place; where the filesystem cannot swap,
/// the old one is renamed aside first and [`clean_stale_writes`] restores it after a crash in
/// between.
pub fn write_dir_atomically<E: From<LoraError>>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let (parent, name) = split(dir).map_err(E::from)?;
    std::fs::create_dir_all(&parent).map_err(|e| E::from(LoraError::io(&parent, e)))?;
    report(&parent);
    let pid = std::process::id();
    let temp = parent.join(format!(".{name}.partial-{pid}"));
    if temp.exists() {
        std::fs::remove_dir_all(&temp).map_err(|e| E::from(LoraError::io(&temp, e)))?;
    }
    std::fs::create_dir(&temp).map_err(|e| E::from(LoraError::io(&temp, e)))?;
    if let Err(e) = fill(&temp) {
        let _ = std::fs::remove_dir_all(&temp);
        return Err(e);
    }
    sync_tree(&temp).map_err(E::from)?;
    if dir.exists() {
        replace_dir(&temp, dir, &parent.join(format!(".{name}.old-{pid}"))).map_err(E::from)?;
    } else {
        std::fs::rename(&temp, dir).map_err(|e| E::from(LoraError::io(dir, e)))?;
    }
    sync_dir(&parent).map_err(E::from)
}

/// Writes `bytes` to `path` through a fsynced temporary sibling renamed over it: readers see
/// the old file or the new one, never a mix.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<(), LoraError> {
    let (parent, name) = split(path)?;
    let temp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temp)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&temp);
        return Err(LoraError::io(&temp, e));
    }
    std::fs::rename(&temp, path).map_err(|e| LoraError::io(path, e))?;
    sync_dir(&parent)
}

/// Cleans up after writers that died in `dir`: a `.NAME.partial-PID` of a process that no
/// longer runs is an unfinished write and is deleted; a `.NAME.old-PID` is the previous
/// `NAME`, put back when `NAME` is missing (the writer died between its two renames) and
/// deleted otherwise. Returns one line per entry handled, for the caller to report. Entries of
/// live processes are left alone.
pub fn clean_stale_writes(dir: &Path) -> Result<Vec<String>, LoraError> {
    let mut done = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(done);
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(stale) = file_name.to_str().and_then(parse_temp_name) else {
            continue;
        };
        if stale.pid == std::process::id() || process_alive(stale.pid) {
            continue;
        }
        let path = entry.path();
        let target = dir.join(stale.name);
        if stale.old && !target.exists() {
            std::fs::rename(&path, &target).map_err(|e| LoraError::io(&path, e))?;
            done.push(format!(
                "restored {} from {} (a write that replaced it was killed midway)",
                target.display(),
                path.display()
            ));
            continue;
        }
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| LoraError::io(&path, e))?;
        done.push(format!(
            "removed {}, left by process {} that was killed while writing",
            path.display(),
            stale.pid
        ));
    }
    Ok(done)
}

fn report(dir: &Path) {
    match clean_stale_writes(dir) {
        Ok(done) => done.iter().for_each(|line| tracing::warn!("{line}")),
        Err(e) => tracing::warn!("cannot clean up interrupted writes: {e}"),
    }
}

struct TempName<'a> {
    name: &'a str,
    old: bool,
    pid: u32,
}

/// `.NAME.partial-PID` or `.NAME.old-PID`.
fn parse_temp_name(file_name: &str) -> Option<TempName<'_>> {
    let rest = file_name.strip_prefix('.')?;
    let (stem, pid) = rest.rsplit_once('-')?;
    let pid = pid.parse().ok()?;
    if let Some(name) = stem.strip_suffix(".partial") {
        return Some(TempName { name, old: false, pid });
    }
    let name = stem.strip_suffix(".old")?;
    Some(TempName { name, old: true, pid })
}

fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        if pid <= 0 {
            return false;
        }
        // SAFETY: signal 0 only asks whether the process exists; nothing is sent.
        let status = unsafe { libc::kill(pid, 0) };
        status == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        // No cheap check: treat every writer as alive, so nothing of theirs is touched.
        let _ = pid;
        true
    }
}

fn split(path: &Path) -> Result<(PathBuf, String), LoraError> {
    let name = path
        .file_name()
        .ok_or_else(|| LoraError::io(path, std::io::Error::other("not a file or directory name")))?
        .to_string_lossy()
        .into_owned();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// Puts `new` in place of the existing `dir`; `aside` is where the old one waits when the
/// filesystem cannot swap them in one step.
fn replace_dir(new: &Path, dir: &Path, aside: &Path) -> Result<(), LoraError> {
    if exchange(new, dir).is_ok() {
        // `new` now holds the old directory.
        return std::fs::remove_dir_all(new).map_err(|e| LoraError::io(new, e));
    }
    std::fs::rename(dir, aside).map_err(|e| LoraError::io(dir, e))?;
    std::fs::rename(new, dir).map_err(|e| LoraError::io(dir, e))?;
    std::fs::remove_dir_all(aside).map_err(|e| LoraError::io(aside, e))
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths, relative to the working directory.
    let status = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// fsyncs every file under `dir`, then `dir` itself.
fn sync_tree(dir: &Path) -> Result<(), LoraError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LoraError::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| LoraError::io(dir, e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| LoraError::io(&path, e))?;
        }
    }
    sync_dir(dir)
}

/// fsyncs a directory, so the names created or renamed in it survive a crash.
fn sync_dir(dir: &Path) -> Result<(), LoraError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| LoraError::io(dir, e))
    }
    #[cfg(not(unix))]
    {
        // Directories cannot be opened for syncing there; renames are journaled by the filesystem.
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> Result<(), LoraError> {
        write_dir_atomically(dir, |tmp| -> Result<(), LoraError> {
            std::fs::write(tmp.join("file"), text).map_err(|e| LoraError::io(tmp, e))
        })
    }

    #[test]
    fn a_replaced_directory_holds_the_new_files_and_no_temporary_is_left() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("checkpoint-3");
        write(&dir, "old").unwrap();
        write(&dir, "new").unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("file")).unwrap(), "new");
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["checkpoint-3"]);
    }

    #[test]
    fn leftovers_of_a_dead_process_are_removed_or_restored() {
        let root = tempfile::tempdir().unwrap();
        // A pid that cannot be running: above the kernel's limit (2^22).
        let dead = 4_194_304 + 17;
        std::fs::create_dir(root.path().join(format!(".checkpoint-6.partial-{dead}"))).unwrap();
        std::fs::create_dir(root.path().join(format!(".checkpoint-3.old-{dead}"))).unwrap();
        std::fs::write(root.path().join(format!(".checkpoint-3.old-{dead}/file")), "kept").unwrap();
        std::fs::create_dir(
            root.path()
                .join(format!(".checkpoint-9.partial-{}", std::process::id())),
        )
        .unwrap();
        let done = clean_stale_writes(root.path()).unwrap();
        assert_eq!(done.len(), 2, "{done:?}");
        assert!(!root.path().join(format!(".checkpoint-6.partial-{dead}")).exists());
        assert_eq!(
            std::fs::read_to_string(root.path().join("checkpoint-3/file")).unwrap(),
            "kept",
            "the only copy of checkpoint-3 is put back"
        );
        assert!(
            root.path()
                .join(format!(".checkpoint-9.partial-{}", std::process::id()))
                .exists(),
            "a live writer's work is left alone"
        );
    }

    #[test]
    fn a_file_written_atomically_replaces_the_old_one() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("run_config.toml");
        write_file_atomically(&path, b"a = 1\n").unwrap();
        write_file_atomically(&path, b"a = 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a = 2\n");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }
}
