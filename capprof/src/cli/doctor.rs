//! `capprof doctor`: what this machine offers capprof, and what to do about what is missing.

use std::path::Path;

use capprof::{
    attach::{AttachMode, AttachRequest},
    btf::Btf,
    cgroup,
    kernel_layout::KernelLayout,
    loader::{LoadError, Tracer, TracerOptions},
    privileges,
};

use super::Exit;

/// Check the kernel, privileges and mounts capprof relies on.
///
/// Tries to load each attach path for real (fentry, kprobe, tracepoint), so run it as root.
/// Exits 0 when capprof can trace here, 3 without privileges, 4 when the kernel lacks a hook.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {}

/// One line of the report.
enum Finding {
    Ok(String),
    Missing(String),
}

pub async fn run(_args: DoctorArgs) -> anyhow::Result<Exit> {
    let mut findings = Vec::new();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    findings.push(Finding::Ok(format!("kernel {}", release.trim())));

    let effective = privileges::effective_capabilities().unwrap_or(0);
    let missing = privileges::missing_for_tracing(effective);
    if missing.is_empty() {
        findings.push(Finding::Ok("privileges: can load eBPF programs".to_owned()));
    } else {
        findings.push(Finding::Missing(privileges::how_to_grant(&missing)));
    }

    let btf_ok = match Btf::from_kernel()
        .and_then(|btf| KernelLayout::from_btf(&btf).map(|layout| (btf, layout)))
    {
        Ok((_, layout)) => {
            findings.push(Finding::Ok(format!(
                "kernel BTF: present (cap_capable's 4th argument is {:?})",
                layout.cap_capable_abi
            )));
            true
        }
        Err(error) => {
            findings.push(Finding::Missing(format!("kernel BTF: {error}")));
            false
        }
    };

    let mut usable_modes = Vec::new();
    if btf_ok && missing.is_empty() {
        for mode in AttachMode::LADDER {
            let request = AttachRequest::from(mode);
            match Tracer::load(&TracerOptions {
                attach: request,
                ..Default::default()
            }) {
                Ok(_) => {
                    usable_modes.push(mode);
                    findings.push(Finding::Ok(format!("attach {mode}: loads and attaches")));
                }
                Err(LoadError::NoAttachPath { attempts, .. }) => {
                    let reason = attempts
                        .first()
                        .map(|a| a.reason.as_str())
                        .unwrap_or("unavailable");
                    findings.push(Finding::Missing(format!("attach {mode}: {reason}")));
                }
                Err(other) => findings.push(Finding::Missing(format!("attach {mode}: {other}"))),
            }
        }
        match usable_modes.first() {
            Some(mode) => findings.push(Finding::Ok(format!("--attach auto will use {mode}"))),
            None => findings.push(Finding::Missing(
                "no attach path works: capprof cannot trace on this kernel".into(),
            )),
        }
    }

    match cgroup::unified_mount() {
        Ok(mount) => findings.push(Finding::Ok(format!(
            "cgroup v2 hierarchy at {}",
            mount.display()
        ))),
        Err(error) => findings.push(Finding::Missing(error.to_string())),
    }
    if capprof::bpffs::is_bpffs(Path::new("/sys/fs/bpf")) {
        findings.push(Finding::Ok("bpffs mounted at /sys/fs/bpf".to_owned()));
    } else {
        findings.push(Finding::Missing(
            "bpffs is not mounted at /sys/fs/bpf (the daemon pins its maps there): mount -t bpf bpf /sys/fs/bpf".to_owned(),
        ));
    }

    match capprof::docker::EngineAddress::from_env() {
        Ok(address) => match capprof::docker::connect(&address).await {
            Ok(engine) => findings.push(Finding::Ok(format!(
                "Docker engine {} at {address} (API {})",
                engine.info().server_version,
                engine.info().api_version
            ))),
            Err(error) => findings.push(Finding::Missing(format!(
                "Docker: {error} (capprof still traces, but cannot name containers)"
            ))),
        },
        Err(error) => findings.push(Finding::Missing(format!("Docker: {error}"))),
    }

    for finding in &findings {
        match finding {
            Finding::Ok(text) => println!("ok       {text}"),
            Finding::Missing(text) => println!("missing  {text}"),
        }
    }
    Ok(if !missing.is_empty() {
        Exit::Privileges
    } else if usable_modes.is_empty() {
        Exit::KernelUnsupported
    } else {
        Exit::Success
    })
}
