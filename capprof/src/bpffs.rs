//! The BPF filesystem, where pinned programs, links and maps live past their process.

use std::{ffi::CString, io, path::Path};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` is (on) a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills a zeroed struct for a valid C string.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Makes sure `mount_point` is a bpffs mount, mounting one there when it is not (as systemd does
/// at boot on most distributions).
pub fn ensure_mounted(mount_point: &Path) -> io::Result<()> {
    if is_bpffs(mount_point) {
        return Ok(());
    }
    std::fs::create_dir_all(mount_point)?;
    let target =
        CString::new(mount_point.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: mount with valid C strings and no data.
    let result = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    tracing::info!(path = %mount_point.display(), "mounted bpffs");
    Ok(())
}
