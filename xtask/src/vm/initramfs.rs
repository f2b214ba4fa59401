//! The guest's whole root file system: an uncompressed `newc` cpio archive (the format the kernel
//! unpacks into its initial tmpfs) holding busybox, `/init` and the static test binaries.

use std::{
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};

use super::artifacts::GuestBinaries;

/// The guest's `/init`: mounts, runs the tests per mode, reports, powers off.
const INIT_SCRIPT: &str = include_str!("guest-init.sh");
/// busybox-static provides the shell, mount, ip and poweroff.
const BUSYBOX: &str = "/bin/busybox";

/// Writes `<vm_dir>/initramfs.cpio` unless an identical one is already there.
pub fn build(binaries: &GuestBinaries, vm_dir: &Path) -> anyhow::Result<PathBuf> {
    let busybox = Path::new(BUSYBOX);
    if !busybox.is_file() {
        bail!("{BUSYBOX} is missing; install it with `apt-get install busybox-static`");
    }
    let mut files: Vec<(String, PathBuf)> = vec![("bin/busybox".to_owned(), busybox.to_owned())];
    for (name, path) in &binaries.programs {
        files.push((format!("bin/{name}"), path.clone()));
    }
    for (name, path) in &binaries.tests {
        files.push((format!("tests/{name}"), path.clone()));
    }

    let output = vm_dir.join("initramfs.cpio");
    let fingerprint_file = vm_dir.join("initramfs.fingerprint");
    let fingerprint = fingerprint(&files)?;
    if output.is_file()
        && std::fs::read_to_string(&fingerprint_file).is_ok_and(|old| old == fingerprint)
    {
        return Ok(output);
    }

    let partial = vm_dir.join("initramfs.cpio.partial");
    let mut archive = Cpio::new(std::io::BufWriter::new(
        std::fs::File::create(&partial)
            .with_context(|| format!("creating {}", partial.display()))?,
    ));
    for directory in [
        "bin", "dev", "etc", "proc", "root", "run", "sys", "tests", "tmp",
    ] {
        archive.directory(directory)?;
    }
    // The kernel opens /dev/console for init's stdio before init could mount devtmpfs.
    archive.char_device("dev/console", 5, 1)?;
    archive.file("init", 0o755, INIT_SCRIPT.as_bytes())?;
    for (name, path) in &files {
        let contents =
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        archive.file(name, 0o755, &contents)?;
    }
    archive.finish()?;
    std::fs::rename(&partial, &output)?;
    std::fs::write(&fingerprint_file, fingerprint)?;
    Ok(output)
}

/// What the archive is made of: the init script and each file's path, size and mtime.
fn fingerprint(files: &[(String, PathBuf)]) -> anyhow::Result<String> {
    // The script itself, so that editing it rebuilds the archive.
    let mut text = format!("{INIT_SCRIPT}\n--\n");
    for (name, path) in files {
        let metadata =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        text.push_str(&format!(
            "{name} {} {} {}.{}\n",
            path.display(),
            metadata.len(),
            metadata.mtime(),
            metadata.mtime_nsec()
        ));
    }
    Ok(text)
}

/// A writer of the `newc` cpio format (see the kernel's
/// Documentation/driver-api/early-userspace/buffer-format.rst).
struct Cpio<W: Write> {
    out: W,
    written: u64,
    next_inode: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl<W: Write> Cpio<W> {
    fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_inode: 1,
        }
    }

    fn directory(&mut self, name: &str) -> std::io::Result<()> {
        self.entry(name, S_IFDIR | 0o755, (0, 0), &[])
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) -> std::io::Result<()> {
        self.entry(name, S_IFCHR | 0o600, (major, minor), &[])
    }

    fn file(&mut self, name: &str, permissions: u32, contents: &[u8]) -> std::io::Result<()> {
        self.entry(name, S_IFREG | permissions, (0, 0), contents)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        (rdev_major, rdev_minor): (u32, u32),
        contents: &[u8],
    ) -> std::io::Result<()> {
        let inode = self.next_inode;
        self.next_inode += 1;
        let links = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let size = u32::try_from(contents.len())
            .map_err(|_| std::io::Error::other(format!("{name} is too large for cpio")))?;
        let name_size = name.len() as u32 + 1;
        let header = format!(
            "070701{inode:08x}{mode:08x}{uid:08x}{gid:08x}{links:08x}{mtime:08x}{size:08x}\
             {dev_major:08x}{dev_minor:08x}{rdev_major:08x}{rdev_minor:08x}{name_size:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            dev_major = 0,
            dev_minor = 0,
            check = 0,
        );
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(contents)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Header+name and data are each padded to a multiple of four bytes.
    fn pad(&mut self) -> std::io::Result<()> {
        let padding = (4 - self.written % 4) % 4;
        self.write(&[0; 3][..padding as usize])
    }

    fn finish(mut self) -> std::io::Result<()> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_and_terminated() {
        let mut bytes = Vec::new();
        let mut archive = Cpio::new(&mut bytes);
        archive.directory("bin").unwrap();
        archive.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        archive.char_device("dev/console", 5, 1).unwrap();
        archive.finish().unwrap();

        // First header: magic, inode 1, directory mode 040755.
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(&bytes[14..22], b"000041ed");
        // Header (110 bytes) + "bin\0" = 114, padded to 116; the next header starts there.
        assert_eq!(&bytes[116..122], b"070701");
        let init_header = std::str::from_utf8(&bytes[116..116 + 110]).unwrap();
        assert_eq!(&init_header[54..62], "0000000a", "file size");
        // Header + "init\0" = 115 → 116; data 10 → 12: the console's header follows.
        let console = 116 + 116 + 12;
        let console_header = std::str::from_utf8(&bytes[console..console + 110]).unwrap();
        assert_eq!(
            &console_header[14..22],
            "00002180",
            "char device, mode 0600"
        );
        assert_eq!(&console_header[78..86], "00000005", "rdev major");
        assert_eq!(&console_header[86..94], "00000001", "rdev minor");
        assert!(bytes.len() % 4 == 0);
        let tail = String::from_utf8_lossy(&bytes[bytes.len() - 16..]);
        assert!(tail.contains("TRAILER!!!"), "{tail}");
    }
}
