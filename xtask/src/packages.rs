//! Debian packages: which are installed (`dpkg-query`), installing the missing ones (`apt-get`),
//! and whether this host is Debian-like at all (`/etc/os-release`).

use std::{collections::BTreeSet, process::Command};

use anyhow::Context;

/// A package the project needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Package {
    pub name: &'static str,
    /// Why the project works without it; `None` for an essential package, whose absence fails
    /// setup.
    pub optional: Option<&'static str>,
}

const fn essential(name: &'static str) -> Package {
    Package {
        name,
        optional: None,
    }
}

/// The packages from DESIGN.md; `vm` adds QEMU for the VM tests.
pub fn required(vm: bool) -> Vec<Package> {
    let mut packages = vec![
        // Debian's compiler with std sources: builds the eBPF program with -Z build-std=core.
        essential("rustc-web"),
        essential("cargo-web"),
        essential("rust-web-src"),
        // bpf-linker links against it.
        essential("llvm-22-dev"),
        Package {
            name: "bpftool",
            optional: Some("only for inspecting loaded programs and maps by hand"),
        },
        // The benchmark's reference.
        essential("bpftrace"),
        // The integration tests run a real engine and build images from busybox.
        essential("docker.io"),
        essential("docker-compose"),
        essential("busybox-static"),
    ];
    if vm {
        packages.push(essential("qemu-system-x86"));
    }
    packages
}

/// The names among `packages` that dpkg reports as installed.
pub fn installed(packages: &[Package]) -> anyhow::Result<BTreeSet<String>> {
    let output = Command::new("dpkg-query")
        .arg("--show")
        .arg("--showformat=${Package}\\t${Status}\\n")
        .args(packages.iter().map(|package| package.name))
        .output()
        .context("cannot run dpkg-query")?;
    // dpkg-query exits 1 when some names are unknown to it, and still lists the others.
    Ok(parse_installed(&String::from_utf8_lossy(&output.stdout)))
}

/// Reads `dpkg-query --showformat='${Package}\t${Status}\n'` output.
fn parse_installed(output: &str) -> BTreeSet<String> {
    output
        .lines()
        .filter_map(|line| {
            let (name, status) = line.split_once('\t')?;
            // `${Status}` is "want error state", e.g. "install ok installed".
            let state = status.split_whitespace().nth(2)?;
            // Pending triggers leave the files in place: the package is usable.
            matches!(state, "installed" | "triggers-pending" | "triggers-awaited")
                .then(|| name.trim().to_owned())
        })
        .collect()
}

/// Whether `/etc/os-release` names Debian or a derivative (Ubuntu says `ID_LIKE=debian`).
pub fn host_is_debian_like() -> bool {
    std::fs::read_to_string("/etc/os-release").is_ok_and(|text| is_debian_like(&text))
}

fn is_debian_like(os_release: &str) -> bool {
    os_release.lines().any(|line| {
        let Some((key, value)) = line.split_once('=') else {
            return false;
        };
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
        matches!(key.trim(), "ID" | "ID_LIKE") && value.split_whitespace().any(|id| id == "debian")
    })
}

/// The command that installs `names`, as the user should type it.
pub fn install_command(names: &[&str], as_root: bool) -> String {
    let sudo = if as_root { "" } else { "sudo " };
    format!(
        "{sudo}apt-get install -y --no-install-recommends {}",
        names.join(" ")
    )
}

/// Installs `names` with apt-get; refreshes the package lists once when apt cannot find a package
/// in stale or absent lists. On failure returns the tail of apt's output.
pub fn install(names: &[&str]) -> Result<(), String> {
    let attempt = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(names)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
    };
    let describe = |output: &std::process::Output| {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        text
    };
    let first = attempt().map_err(|error| format!("cannot run apt-get: {error}"))?;
    if first.status.success() {
        return Ok(());
    }
    let first_text = describe(&first);
    if !lacks_package_lists(&first_text) {
        return Err(tail(&first_text, 8));
    }
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|error| format!("cannot run apt-get update: {error}"))?;
    if !update.status.success() {
        return Err(tail(&describe(&update), 8));
    }
    let second = attempt().map_err(|error| format!("cannot run apt-get: {error}"))?;
    if second.status.success() {
        Ok(())
    } else {
        Err(tail(&describe(&second), 8))
    }
}

/// apt's ways of saying its package lists are missing or out of date.
fn lacks_package_lists(apt_output: &str) -> bool {
    [
        "Unable to locate package",
        "has no installation candidate",
        "Failed to fetch",
    ]
    .iter()
    .any(|symptom| apt_output.contains(symptom))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_installed_states_count() {
        let output = "\
bpftool\tinstall ok installed
bpftrace\tdeinstall ok config-files
docker.io\tinstall ok half-configured
llvm-22-dev\tinstall ok triggers-pending
busybox-static\tunknown ok not-installed
rustc-web\tinstall ok installed
";
        let installed = parse_installed(output);
        assert_eq!(
            installed.into_iter().collect::<Vec<_>>(),
            ["bpftool", "llvm-22-dev", "rustc-web"]
        );
    }

    #[test]
    fn malformed_dpkg_lines_are_ignored() {
        assert!(parse_installed("no tab here installed\nx\tinstall\n").is_empty());
    }

    #[test]
    fn debian_and_derivatives_are_recognised() {
        assert!(is_debian_like(
            "PRETTY_NAME=\"Debian GNU/Linux 12\"\nID=debian\n"
        ));
        assert!(is_debian_like("ID=ubuntu\nID_LIKE=debian\n"));
        assert!(is_debian_like("ID=pop\nID_LIKE=\"ubuntu debian\"\n"));
        assert!(!is_debian_like("ID=fedora\nID_LIKE=\"rhel centos\"\n"));
        assert!(!is_debian_like("ID=debianish\n"));
    }

    #[test]
    fn install_command_uses_sudo_only_when_needed() {
        assert_eq!(
            install_command(&["bpftrace", "bpftool"], false),
            "sudo apt-get install -y --no-install-recommends bpftrace bpftool"
        );
        assert!(install_command(&["bpftrace"], true).starts_with("apt-get install"));
    }

    #[test]
    fn vm_adds_qemu() {
        let names = |vm| -> Vec<&str> { required(vm).iter().map(|p| p.name).collect() };
        assert!(!names(false).contains(&"qemu-system-x86"));
        assert!(names(true).contains(&"qemu-system-x86"));
        assert!(names(false).contains(&"rust-web-src"));
    }

    #[test]
    fn stale_lists_are_recognised() {
        assert!(lacks_package_lists(
            "E: Unable to locate package llvm-22-dev"
        ));
        assert!(!lacks_package_lists(
            "E: Could not get lock /var/lib/dpkg/lock-frontend"
        ));
        assert_eq!(tail("a\n\nb\nc\n", 2), "b\nc");
    }
}
