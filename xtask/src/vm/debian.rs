//! Kernels to boot: a given image, or Debian's `linux-image-*` packages fetched with
//! `apt-get download` and unpacked without installing anything.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

/// A bootable kernel image.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Short name for logs and the summary (`linux-image-6.1.0-57-amd64-unsigned`).
    pub label: String,
    /// Where it came from, with the package version when known.
    pub description: String,
    /// The bzImage.
    pub image: PathBuf,
}

impl Kernel {
    /// A kernel image the user points at.
    pub fn from_path(path: &Path) -> anyhow::Result<Self> {
        if !path.is_file() {
            bail!(
                "--kernel {}: no such file; pass a bzImage such as /boot/vmlinuz-<version>",
                path.display()
            );
        }
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "kernel".to_owned());
        Ok(Self {
            label: name,
            description: format!("kernel image {}", path.display()),
            image: path.to_owned(),
        })
    }
}

/// Finds Debian's newest `linux-image-<version>…-<flavour>-unsigned` package known to apt,
/// downloads it once into `cache`, and keeps only its `/boot` files.
pub fn fetch(version: &str, flavour: &str, cache: &Path) -> anyhow::Result<Kernel> {
    let package = newest_package(version, flavour)?;
    let directory = cache.join(&package.name);
    let image = directory.join("vmlinuz");
    let version_file = directory.join("package-version");
    if image.is_file() && version_file.is_file() {
        let package_version = std::fs::read_to_string(&version_file)?.trim().to_owned();
        return Ok(Kernel {
            label: package.name.clone(),
            description: format!("Debian {} {package_version}, cached", package.name),
            image,
        });
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let scratch = cache.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let result = download_and_unpack(&package.name, &scratch, &directory);
    let _ = std::fs::remove_dir_all(&scratch);
    let package_version = result?;
    std::fs::write(&version_file, format!("{package_version}\n"))?;
    Ok(Kernel {
        label: package.name.clone(),
        description: format!("Debian {} {package_version}, downloaded", package.name),
        image,
    })
}

#[derive(Debug, PartialEq, Eq)]
struct Package {
    name: String,
    /// The ABI part of the name as numbers, for ordering: `6.1.0-57` → [6, 1, 0, 57].
    order: Vec<u64>,
}

fn newest_package(version: &str, flavour: &str) -> anyhow::Result<Package> {
    let output = Command::new("apt-cache")
        .args(["pkgnames", "linux-image-"])
        .output()
        .context("running `apt-cache pkgnames` (Debian kernels need apt)")?;
    if !output.status.success() {
        bail!(
            "`apt-cache pkgnames linux-image-` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let names = String::from_utf8_lossy(&output.stdout);
    let mut candidates: Vec<Package> = names
        .lines()
        .filter_map(|name| parse_package(name, version, flavour))
        .collect();
    candidates.sort_by(|a, b| a.order.cmp(&b.order));
    candidates.pop().with_context(|| {
        let series = available_series(&names, flavour);
        format!(
            "apt knows no linux-image-{version}*-{flavour}-unsigned package; Debian versions apt \
             offers here: {}. Run `apt-get update` if the list looks stale",
            if series.is_empty() {
                "none".to_owned()
            } else {
                series.join(", ")
            }
        )
    })
}

/// `linux-image-6.1.0-57-amd64-unsigned` and `linux-image-6.12.118+deb12-amd64-unsigned` belong to
/// versions `6.1` and `6.12`; other flavours (`-cloud-amd64`, `-rt-amd64`) do not match `amd64`.
fn parse_package(name: &str, version: &str, flavour: &str) -> Option<Package> {
    let abi = name
        .strip_prefix("linux-image-")?
        .strip_suffix("-unsigned")?
        .strip_suffix(flavour)?
        .strip_suffix('-')?;
    let rest = abi.strip_prefix(version)?;
    if !(rest.is_empty() || rest.starts_with('.') || rest.starts_with('-')) {
        return None;
    }
    let (numbers, suffix) = abi.split_once('+').unwrap_or((abi, ""));
    if !(suffix.is_empty() || suffix.starts_with("deb")) {
        return None;
    }
    let order = numbers
        .split(['.', '-'])
        .map(|part| part.parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    Some(Package {
        name: name.to_owned(),
        order,
    })
}

/// The `major.minor` series apt offers in this flavour, for error messages.
fn available_series(names: &str, flavour: &str) -> Vec<String> {
    let mut series: Vec<String> = names
        .lines()
        .filter_map(|name| {
            let abi = name
                .strip_prefix("linux-image-")?
                .strip_suffix(&format!("-{flavour}-unsigned"))?;
            let mut parts = abi.split(['.', '-', '+']);
            let series = format!("{}.{}", parts.next()?, parts.next()?);
            parse_package(name, &series, flavour).map(|_| series)
        })
        .collect();
    series.sort();
    series.dedup();
    series
}

/// Downloads the package into `scratch`, copies its kernel image into `destination`, and returns
/// the package version.
fn download_and_unpack(
    package: &str,
    scratch: &Path,
    destination: &Path,
) -> anyhow::Result<String> {
    eprintln!("vm-test: apt-get download {package}");
    let status = Command::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(scratch)
        .status()
        .context("running `apt-get download`")?;
    if !status.success() {
        bail!("`apt-get download {package}` failed ({status}); check the apt sources and network");
    }
    let deb = std::fs::read_dir(scratch)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .with_context(|| {
            format!(
                "`apt-get download {package}` left no .deb in {}",
                scratch.display()
            )
        })?;
    let package_version = deb_field(&deb, "Version")?;

    // Only /boot is needed; the package's hundreds of MiB of modules stay in the archive.
    let root = scratch.join("root");
    std::fs::create_dir_all(&root)?;
    let mut tarball = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("running `dpkg-deb --fsys-tarfile`")?;
    let tar_status = Command::new("tar")
        .args(["-x", "--wildcards", "-C"])
        .arg(&root)
        .args(["./boot/vmlinuz-*", "./boot/config-*"])
        .stdin(tarball.stdout.take().context("dpkg-deb stdout")?)
        .status()
        .context("running `tar`")?;
    let dpkg_status = tarball.wait()?;
    if !dpkg_status.success() || !tar_status.success() {
        bail!(
            "unpacking {} failed (dpkg-deb {dpkg_status}, tar {tar_status})",
            deb.display()
        );
    }

    let boot = root.join("boot");
    let find = |prefix: &str| -> anyhow::Result<PathBuf> {
        std::fs::read_dir(&boot)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with(prefix))
            })
            .with_context(|| format!("{package} has no /boot/{prefix}*"))
    };
    let image = find("vmlinuz-")?;
    let config = find("config-")?;
    std::fs::create_dir_all(destination)?;
    std::fs::copy(&config, destination.join("config"))?;
    // The image goes last: its presence marks a complete cache entry.
    std::fs::copy(&image, destination.join("vmlinuz"))?;
    Ok(package_version)
}

fn deb_field(deb: &Path, field: &str) -> anyhow::Result<String> {
    let output = Command::new("dpkg-deb")
        .arg("--field")
        .arg(deb)
        .arg(field)
        .output()
        .context("running `dpkg-deb --field`")?;
    if !output.status.success() {
        bail!("`dpkg-deb --field {} {field}` failed", deb.display());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_match_their_series_and_flavour_only() {
        let parsed = |name| parse_package(name, "6.1", "amd64").map(|package| package.order);
        assert_eq!(
            parsed("linux-image-6.1.0-57-amd64-unsigned"),
            Some(vec![6, 1, 0, 57])
        );
        assert_eq!(parsed("linux-image-6.1.0-57-cloud-amd64-unsigned"), None);
        assert_eq!(parsed("linux-image-6.1.0-57-rt-amd64-unsigned"), None);
        assert_eq!(parsed("linux-image-6.1.0-57-amd64"), None, "signed");
        assert_eq!(parsed("linux-image-6.12.118+deb12-amd64-unsigned"), None);
        assert_eq!(
            parse_package("linux-image-6.12.118+deb12-amd64-unsigned", "6.12", "amd64")
                .map(|package| package.order),
            Some(vec![6, 12, 118])
        );
        assert_eq!(
            parse_package(
                "linux-image-6.1.0-57-cloud-amd64-unsigned",
                "6.1.0-57",
                "cloud-amd64"
            )
            .map(|package| package.order),
            Some(vec![6, 1, 0, 57])
        );
    }

    #[test]
    fn series_are_listed_for_errors() {
        let names = "linux-image-6.1.0-56-amd64-unsigned\nlinux-image-6.1.0-57-amd64-unsigned\n\
                     linux-image-6.12.118+deb12-amd64-unsigned\nlinux-image-amd64\n\
                     linux-image-6.1.0-57-cloud-amd64-unsigned\n";
        assert_eq!(available_series(names, "amd64"), ["6.1", "6.12"]);
    }
}
