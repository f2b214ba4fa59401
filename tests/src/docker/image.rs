//! The test image: busybox on an empty file system, built here because there is no registry.
//!
//! `FROM scratch`, Debian's static `/bin/busybox` (package busybox-static) and its applet links,
//! built once per engine with the legacy builder and reused afterwards.
//!
//! Two things to know when writing tests with it: there is no `/tmp` or `/etc/passwd` (only
//! what Docker adds: `/proc`, `/sys`, `/dev`, `/etc/hosts`...), and busybox's shell runs its
//! applets by executing `/proc/self/exe`, so their checks show the task name `exe`.

use std::{
    io::Read,
    path::{Path, PathBuf},
    sync::Mutex,
};

use super::engine::{DockerEngine, HarnessError, run};

/// The image's tag.
pub const BUSYBOX_IMAGE: &str = "capprof-test/busybox:latest";

/// Where the static busybox comes from.
const BUSYBOX_BINARY: &str = "/bin/busybox";

const DOCKERFILE: &str = "\
FROM scratch
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
CMD [\"/bin/sh\"]
";

/// Serialises builds within a process; across processes a duplicate build only costs time.
static BUILD: Mutex<()> = Mutex::new(());

/// Makes sure the engine has [`BUSYBOX_IMAGE`] and returns its tag.
pub fn busybox_image(engine: &DockerEngine) -> Result<&'static str, HarnessError> {
    let _build = BUILD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if engine
        .cli(["image", "inspect", "--format", "{{.Id}}", BUSYBOX_IMAGE])
        .is_ok()
    {
        return Ok(BUSYBOX_IMAGE);
    }
    let binary = Path::new(BUSYBOX_BINARY);
    check_static(binary)?;
    let context =
        std::env::temp_dir().join(format!("capprof-busybox-context-{}", std::process::id()));
    let outcome = build(engine, binary, &context);
    let _ = std::fs::remove_dir_all(&context);
    outcome.map(|()| BUSYBOX_IMAGE)
}

fn build(engine: &DockerEngine, binary: &Path, context: &Path) -> Result<(), HarnessError> {
    let io = |action, path: PathBuf| {
        move |source| HarnessError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(context).map_err(io("cannot create", context.into()))?;
    let dockerfile = context.join("Dockerfile");
    std::fs::write(&dockerfile, DOCKERFILE).map_err(io("cannot write", dockerfile.clone()))?;
    let copy = context.join("busybox");
    std::fs::copy(binary, &copy).map_err(io("cannot copy busybox to", copy.clone()))?;
    let mut command = engine.command();
    // The legacy builder: BuildKit needs images and a builder this machine does not have.
    command
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--quiet", "--tag", BUSYBOX_IMAGE])
        .arg(context);
    run(&mut command)?;
    Ok(())
}

/// A dynamically linked busybox cannot run in an empty image; say so instead of letting the
/// build fail obscurely.
fn check_static(binary: &Path) -> Result<(), HarnessError> {
    let mut file = std::fs::File::open(binary).map_err(|source| HarnessError::Io {
        action: "cannot open (install busybox-static)",
        path: binary.into(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| HarnessError::Io {
            action: "cannot read",
            path: binary.into(),
            source,
        })?;
    if has_interpreter(&bytes) != Some(false) {
        return Err(HarnessError::Io {
            action: "is not a static ELF executable (install busybox-static)",
            path: binary.into(),
            source: std::io::Error::other("a FROM scratch image has no dynamic loader"),
        });
    }
    Ok(())
}

/// Whether a 64-bit little-endian ELF file asks for a program interpreter (`PT_INTERP`);
/// `None` when it is not such a file.
fn has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    let u16_at = |offset: usize| {
        Some(u16::from_le_bytes(
            elf.get(offset..offset + 2)?.try_into().ok()?,
        ))
    };
    let u32_at = |offset: usize| {
        Some(u32::from_le_bytes(
            elf.get(offset..offset + 4)?.try_into().ok()?,
        ))
    };
    let u64_at = |offset: usize| {
        Some(u64::from_le_bytes(
            elf.get(offset..offset + 8)?.try_into().ok()?,
        ))
    };
    let table = usize::try_from(u64_at(0x20)?).ok()?;
    let entry_size = usize::from(u16_at(0x36)?);
    let entries = usize::from(u16_at(0x38)?);
    for index in 0..entries {
        if u32_at(table + index * entry_size)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic_executables() {
        // This test binary is dynamically linked (it needs libc's loader).
        let own = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(has_interpreter(&own), Some(true));
        assert_eq!(has_interpreter(b"#!/bin/sh\n"), None);
        match std::fs::read(BUSYBOX_BINARY) {
            Ok(busybox) => assert_eq!(has_interpreter(&busybox), Some(false)),
            Err(error) => crate::ci::skip_or_fail(format!(
                "{BUSYBOX_BINARY}: {error} (install busybox-static)"
            )),
        }
    }
}
