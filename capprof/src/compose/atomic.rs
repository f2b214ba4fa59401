//! Replacing a file atomically, and only if nobody changed it since it was read.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use super::error::ComposeError;

/// The exact bytes of a file when it was read, to tell later whether it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSnapshot {
    contents: Vec<u8>,
}

impl FileSnapshot {
    /// Reads a UTF-8 text file and remembers its bytes.
    pub fn read(path: &Path) -> Result<(String, Self), ComposeError> {
        let contents = fs::read(path).map_err(ComposeError::io("cannot read", path))?;
        let text = String::from_utf8(contents.clone()).map_err(|_| ComposeError::NotUtf8 {
            path: path.to_path_buf(),
        })?;
        Ok((text, Self { contents }))
    }

    pub(crate) fn matches_disk(&self, path: &Path) -> Result<bool, ComposeError> {
        let mut current = Vec::with_capacity(self.contents.len());
        File::open(path)
            .and_then(|mut file| file.read_to_end(&mut current))
            .map_err(ComposeError::io("cannot re-read", path))?;
        Ok(current == self.contents)
    }
}

/// Writes `contents` to `path` through a temporary file in the same directory (same file
/// system, so the rename is atomic), after checking that the file still holds exactly what
/// `snapshot` saw. Keeps the file's mode and owner. A symlink is followed and its target
/// replaced, so the link survives.
///
/// The check and the rename are two steps: a writer that slips in between them loses its
/// change. That window is microseconds, against the minutes between reading and writing that
/// the check closes.
pub fn write_atomically(
    path: &Path,
    snapshot: &FileSnapshot,
    contents: &[u8],
) -> Result<(), ComposeError> {
    let target = fs::canonicalize(path).map_err(ComposeError::io("cannot resolve", path))?;
    let metadata = fs::metadata(&target).map_err(ComposeError::io("cannot stat", &target))?;
    let directory = target.parent().unwrap_or(Path::new("/")).to_path_buf();
    let temporary = TemporaryFile::create(&target)?;
    let result = (|| {
        let mut file = &temporary.file;
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(ComposeError::io("cannot write", &temporary.path))?;
        fs::set_permissions(&temporary.path, metadata.permissions()).map_err(ComposeError::io(
            "cannot set permissions on",
            &temporary.path,
        ))?;
        if let Err(error) =
            std::os::unix::fs::chown(&temporary.path, Some(metadata.uid()), Some(metadata.gid()))
        {
            // Only root may give a file away; a user editing their own file keeps ownership.
            tracing::debug!(path = %temporary.path.display(), %error, "cannot keep the owner");
        }
        if !snapshot.matches_disk(&target)? {
            return Err(ComposeError::FileChanged {
                path: path.to_path_buf(),
            });
        }
        fs::rename(&temporary.path, &target)
            .map_err(ComposeError::io("cannot replace", &target))?;
        // Persist the rename itself.
        File::open(&directory)
            .and_then(|dir| dir.sync_all())
            .map_err(ComposeError::io("cannot sync directory", &directory))
    })();
    if result.is_err() {
        temporary.remove();
    }
    result
}

struct TemporaryFile {
    path: PathBuf,
    file: File,
}

impl TemporaryFile {
    fn create(target: &Path) -> Result<Self, ComposeError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let directory = target.parent().unwrap_or(Path::new("/"));
        let name = target
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        loop {
            let path = directory.join(format!(
                ".{name}.capprof-{}-{}.tmp",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => return Ok(Self { path, file }),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(error) => {
                    return Err(ComposeError::Io {
                        action: "cannot create a temporary file next to",
                        path: target.to_path_buf(),
                        source: error,
                    });
                }
            }
        }
    }

    fn remove(&self) {
        if let Err(error) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove temporary file");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn leftovers(directory: &Path) -> Vec<String> {
        fs::read_dir(directory)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".capprof-"))
            .collect()
    }

    #[test]
    fn replaces_the_file_and_keeps_its_mode() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("compose.yml");
        fs::write(&path, "old\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let (text, snapshot) = FileSnapshot::read(&path).unwrap();
        assert_eq!(text, "old\n");
        write_atomically(&path, &snapshot, b"new\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert!(leftovers(directory.path()).is_empty());
    }

    #[test]
    fn refuses_when_the_file_changed_since_it_was_read() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("compose.yml");
        fs::write(&path, "old\n").unwrap();
        let (_, snapshot) = FileSnapshot::read(&path).unwrap();
        fs::write(&path, "someone else\n").unwrap();
        let error = write_atomically(&path, &snapshot, b"new\n").unwrap_err();
        assert!(matches!(error, ComposeError::FileChanged { .. }), "{error}");
        assert!(error.to_string().contains("changed on disk"));
        assert_eq!(fs::read_to_string(&path).unwrap(), "someone else\n");
        assert!(leftovers(directory.path()).is_empty());
    }

    #[test]
    fn follows_a_symlink_and_keeps_it() {
        let directory = tempfile::tempdir().unwrap();
        let real = directory.path().join("real.yml");
        let link = directory.path().join("compose.yml");
        fs::write(&real, "old\n").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let (_, snapshot) = FileSnapshot::read(&link).unwrap();
        write_atomically(&link, &snapshot, b"new\n").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&real).unwrap(), "new\n");
    }

    #[test]
    fn refuses_files_that_are_not_utf8() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("compose.yml");
        fs::write(&path, b"services: \xff\n").unwrap();
        assert!(matches!(
            FileSnapshot::read(&path),
            Err(ComposeError::NotUtf8 { .. })
        ));
    }
}
