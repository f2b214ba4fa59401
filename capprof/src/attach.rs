//! Which hook the tracer uses on `cap_capable`, and why.
//!
//! The strongest path the kernel supports wins: fexit sees the arguments (`opts` included) and the
//! verdict in one call; kprobe+kretprobe see the same in two; the `capability:cap_capable`
//! tracepoint (Linux 6.14+) sees the capability and verdict but not `opts`. Kernels differ in what
//! they allow (kprobes need `CONFIG_KPROBES`, fexit needs ftrace with direct calls), so the choice
//! is made at run time by trying, and the reasons for skipping a path are kept for the user.

use std::{fmt, path::Path};

use serde::{Deserialize, Serialize};

/// A concrete attach path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// fexit on `cap_capable`: cap, opts and verdict in one program.
    Fentry,
    /// kprobe + kretprobe on `cap_capable`: cap and opts at entry, verdict at return.
    Kprobe,
    /// `tp_btf` on the `capability:cap_capable` tracepoint: cap and verdict, no opts.
    Tracepoint,
}

impl AttachMode {
    /// Strongest first: the order `--attach auto` tries them in.
    pub const LADDER: [AttachMode; 3] = [
        AttachMode::Fentry,
        AttachMode::Kprobe,
        AttachMode::Tracepoint,
    ];

    /// Whether this path observes `cap_capable`'s `opts` (NOAUDIT, INSETID) directly.
    pub const fn observes_opts(self) -> bool {
        !matches!(self, AttachMode::Tracepoint)
    }

    /// What the kernel must offer for this path, in words a user can act on.
    pub const fn requirement(self) -> &'static str {
        match self {
            AttachMode::Fentry => {
                "fentry/fexit programs need BPF trampolines: CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS, \
                 CONFIG_FUNCTION_TRACER and a kernel that lets BPF use ftrace (Linux 5.5+ on x86_64)"
            }
            AttachMode::Kprobe => "kprobes need a kernel built with CONFIG_KPROBES=y",
            AttachMode::Tracepoint => {
                "the capability:cap_capable tracepoint needs Linux 6.14 or later with CONFIG_DEBUG_INFO_BTF=y"
            }
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Fentry => "fentry",
            AttachMode::Kprobe => "kprobe",
            AttachMode::Tracepoint => "tracepoint",
        })
    }
}

/// What the user asked for with `--attach`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AttachRequest {
    /// Try fentry, then kprobe, then the tracepoint.
    #[default]
    Auto,
    /// Only fexit on `cap_capable`.
    Fentry,
    /// Only kprobe + kretprobe on `cap_capable`.
    Kprobe,
    /// Only the `capability:cap_capable` tracepoint.
    Tracepoint,
}

impl AttachRequest {
    /// The modes to try, in order.
    pub fn candidates(self) -> &'static [AttachMode] {
        match self {
            AttachRequest::Auto => &AttachMode::LADDER,
            AttachRequest::Fentry => &[AttachMode::Fentry],
            AttachRequest::Kprobe => &[AttachMode::Kprobe],
            AttachRequest::Tracepoint => &[AttachMode::Tracepoint],
        }
    }
}

impl From<AttachMode> for AttachRequest {
    /// Forcing one mode.
    fn from(mode: AttachMode) -> Self {
        match mode {
            AttachMode::Fentry => AttachRequest::Fentry,
            AttachMode::Kprobe => AttachRequest::Kprobe,
            AttachMode::Tracepoint => AttachRequest::Tracepoint,
        }
    }
}

/// Why a mode was not used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedMode {
    pub mode: AttachMode,
    pub reason: String,
}

/// The outcome of choosing: the mode in use and what was skipped on the way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachChoice {
    pub mode: AttachMode,
    pub skipped: Vec<SkippedMode>,
}

impl AttachChoice {
    /// One line for logs and `capprof status`: "tracepoint (fentry: ...; kprobe: ...)".
    pub fn explain(&self) -> String {
        if self.skipped.is_empty() {
            return format!("{} (the strongest path the kernel offers)", self.mode);
        }
        let skipped: Vec<String> = self
            .skipped
            .iter()
            .map(|skip| format!("{}: {}", skip.mode, skip.reason))
            .collect();
        format!("{} ({})", self.mode, skipped.join("; "))
    }
}

/// Facts about the kernel that rule a mode out before trying to load anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelHooks {
    /// `/sys/bus/event_source/devices/kprobe` exists.
    pub kprobes: bool,
    /// BTF declares `btf_trace_cap_capable`, i.e. the tracepoint exists.
    pub cap_capable_tracepoint: bool,
    /// BTF has a `cap_capable` function to attach fexit to.
    pub cap_capable_function: bool,
}

impl KernelHooks {
    /// Probes the running kernel.
    pub fn probe(btf: &crate::btf::Btf) -> Self {
        Self {
            kprobes: Path::new("/sys/bus/event_source/devices/kprobe/type").exists(),
            cap_capable_tracepoint: btf.has_typedef("btf_trace_cap_capable"),
            cap_capable_function: btf.has_function(capprof_common::HOOKED_FUNCTION),
        }
    }

    /// Why `mode` cannot work here, when that is known without trying.
    pub fn rules_out(&self, mode: AttachMode) -> Option<String> {
        match mode {
            AttachMode::Fentry if !self.cap_capable_function => {
                Some("kernel BTF has no cap_capable function to attach to".to_owned())
            }
            AttachMode::Kprobe if !self.kprobes => Some(
                "this kernel has no kprobe PMU (/sys/bus/event_source/devices/kprobe is missing: \
                 CONFIG_KPROBES is not set)"
                    .to_owned(),
            ),
            AttachMode::Tracepoint if !self.cap_capable_tracepoint => Some(
                "this kernel has no capability:cap_capable tracepoint (added in Linux 6.14)"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tries_the_strongest_path_first() {
        assert_eq!(
            AttachRequest::Auto.candidates(),
            &[
                AttachMode::Fentry,
                AttachMode::Kprobe,
                AttachMode::Tracepoint
            ]
        );
        assert_eq!(AttachRequest::Kprobe.candidates(), &[AttachMode::Kprobe]);
    }

    #[test]
    fn missing_hooks_are_named() {
        let hooks = KernelHooks {
            kprobes: false,
            cap_capable_tracepoint: true,
            cap_capable_function: true,
        };
        assert!(
            hooks
                .rules_out(AttachMode::Kprobe)
                .unwrap()
                .contains("CONFIG_KPROBES")
        );
        assert_eq!(hooks.rules_out(AttachMode::Tracepoint), None);
        let old = KernelHooks {
            cap_capable_tracepoint: false,
            ..hooks
        };
        assert!(
            old.rules_out(AttachMode::Tracepoint)
                .unwrap()
                .contains("6.14")
        );
    }

    #[test]
    fn explanation_lists_skipped_modes() {
        let choice = AttachChoice {
            mode: AttachMode::Tracepoint,
            skipped: vec![
                SkippedMode {
                    mode: AttachMode::Fentry,
                    reason: "EPERM".into(),
                },
                SkippedMode {
                    mode: AttachMode::Kprobe,
                    reason: "no kprobes".into(),
                },
            ],
        };
        assert_eq!(
            choice.explain(),
            "tracepoint (fentry: EPERM; kprobe: no kprobes)"
        );
    }
}
