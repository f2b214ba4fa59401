//! What the current process may do: which capabilities it lacks for loading the tracer.

use crate::capability::Capability;

/// The capabilities that let a process load and attach tracing programs without being root.
/// `CAP_SYS_ADMIN` alone also works; `CAP_SYS_RESOURCE` lifts the memlock limit on kernels before
/// 5.11, which charge BPF maps against it.
pub const TRACING_CAPABILITIES: [Capability; 3] = [
    Capability::Bpf,
    Capability::Perfmon,
    Capability::SysResource,
];

/// The effective capability set of this process, from `/proc/self/status`.
pub fn effective_capabilities() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_cap_eff(&status)
        .ok_or_else(|| std::io::Error::other("no CapEff line in /proc/self/status"))
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The capabilities among [`TRACING_CAPABILITIES`] that `effective` lacks; empty when it has
/// them all or has `CAP_SYS_ADMIN` with `CAP_BPF`/`CAP_PERFMON` implied.
pub fn missing_for_tracing(effective: u64) -> Vec<Capability> {
    let has = |cap: Capability| effective & (1u64 << cap.number()) != 0;
    if has(Capability::SysAdmin) {
        return Vec::new();
    }
    TRACING_CAPABILITIES
        .into_iter()
        .filter(|cap| !has(*cap))
        .collect()
}

/// A sentence telling the user how to give capprof what it lacks.
pub fn how_to_grant(missing: &[Capability]) -> String {
    let names: Vec<&str> = missing.iter().map(|cap| cap.kernel_name()).collect();
    let lower: Vec<String> = missing
        .iter()
        .map(|cap| cap.kernel_name().to_ascii_lowercase())
        .collect();
    format!(
        "capprof loads an eBPF program and needs root, or {}. Run it with sudo, or grant the binary \
         these capabilities once: sudo setcap {}+ep \"$(command -v capprof)\"",
        names.join(", "),
        lower.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cap_eff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn root_lacks_nothing_and_nobody_lacks_everything() {
        assert!(missing_for_tracing(u64::MAX).is_empty());
        assert_eq!(missing_for_tracing(0), TRACING_CAPABILITIES.to_vec());
        let bpf_only = 1u64 << Capability::Bpf.number();
        assert_eq!(
            missing_for_tracing(bpf_only),
            vec![Capability::Perfmon, Capability::SysResource]
        );
        let message = how_to_grant(&[Capability::Perfmon]);
        assert!(
            message.contains("CAP_PERFMON") && message.contains("cap_perfmon+ep"),
            "{message}"
        );
    }
}
