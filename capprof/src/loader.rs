//! Loads capprof's eBPF program into the kernel and attaches it to `cap_capable`.
//!
//! [`Tracer`] owns the loaded object and its links: dropping it detaches everything. The maps are
//! read through [`crate::collector::KernelCollector`].

use aya::{
    Ebpf, EbpfLoader,
    programs::{BtfTracePoint, FExit, KProbe, ProgramError},
};
use capprof_common::{
    EVENTS_MAP, FEXIT_PROGRAM, HOOKED_FUNCTION, KPROBE_PROGRAM, KRETPROBE_PROGRAM,
    TRACEPOINT_PROGRAM, globals,
};
use tracing::{debug, info, warn};

use crate::{
    attach::{AttachChoice, AttachMode, AttachRequest, KernelHooks, SkippedMode},
    btf::{Btf, BtfError},
    kernel_layout::KernelLayout,
    privileges,
};

/// The eBPF object built by `build.rs`; empty when built with `AYA_BUILD_SKIP=1`.
static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capprof"));

/// capprof's eBPF object, for tools that load some of its programs themselves (the benchmarks'
/// empty programs).
pub fn program_object() -> Result<&'static [u8], LoadError> {
    if PROGRAM_OBJECT.is_empty() {
        return Err(LoadError::NoProgramObject);
    }
    Ok(PROGRAM_OBJECT)
}

/// How to load the tracer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracerOptions {
    /// Which attach path to use.
    pub attach: AttachRequest,
    /// Count only checks from this cgroup v2 id; `None` counts every cgroup.
    pub cgroup_id: Option<u64>,
    /// Size of the event ring buffer in bytes (a power of two, at least one page).
    pub events_bytes: u32,
}

impl Default for TracerOptions {
    fn default() -> Self {
        Self {
            attach: AttachRequest::Auto,
            cgroup_id: None,
            events_bytes: capprof_common::DEFAULT_EVENTS_BYTES,
        }
    }
}

/// Why the tracer could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this capprof binary was built with AYA_BUILD_SKIP=1 and contains no eBPF program; rebuild it without that variable"
    )]
    NoProgramObject,
    #[error("{}", privileges::how_to_grant(missing))]
    MissingPrivileges {
        missing: Vec<crate::capability::Capability>,
    },
    #[error("cannot read the kernel's type information: {0}")]
    Btf(#[from] BtfError),
    #[error("the kernel rejected capprof's eBPF maps or object: {source}")]
    Object {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("{}", no_attach_path_message(*requested, attempts))]
    NoAttachPath {
        requested: AttachRequest,
        attempts: Vec<SkippedMode>,
    },
    #[error("the event ring buffer size {0} is not a power of two of at least 4096 bytes")]
    BadRingBufferSize(u32),
}

fn no_attach_path_message(requested: AttachRequest, attempts: &[SkippedMode]) -> String {
    let details: Vec<String> = attempts
        .iter()
        .map(|attempt| {
            format!(
                "  {}: {}\n    needs: {}",
                attempt.mode,
                attempt.reason,
                attempt.mode.requirement()
            )
        })
        .collect();
    let what = match requested {
        AttachRequest::Auto => "no way to hook cap_capable works on this kernel".to_owned(),
        forced => format!(
            "--attach {} cannot be used on this kernel",
            forced_name(forced)
        ),
    };
    let hint = if requested == AttachRequest::Auto {
        ""
    } else {
        "\n  try --attach auto to use whichever path the kernel supports"
    };
    format!("{what}:\n{}{hint}", details.join("\n"))
}

fn forced_name(request: AttachRequest) -> &'static str {
    match request {
        AttachRequest::Auto => "auto",
        AttachRequest::Fentry => "fentry",
        AttachRequest::Kprobe => "kprobe",
        AttachRequest::Tracepoint => "tracepoint",
    }
}

/// capprof's eBPF program, loaded and attached.
pub struct Tracer {
    ebpf: Ebpf,
    choice: AttachChoice,
    layout: KernelLayout,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("choice", &self.choice)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Tracer {
    /// Loads the program and attaches it with the strongest path `options.attach` allows.
    pub fn load(options: &TracerOptions) -> Result<Self, LoadError> {
        let object = program_object()?;
        if !options.events_bytes.is_power_of_two() || options.events_bytes < 4096 {
            return Err(LoadError::BadRingBufferSize(options.events_bytes));
        }
        let missing = privileges::effective_capabilities()
            .map(privileges::missing_for_tracing)
            .unwrap_or_default();
        if !missing.is_empty() {
            return Err(LoadError::MissingPrivileges { missing });
        }
        raise_memlock_limit();

        let btf = Btf::from_kernel()?;
        let layout = KernelLayout::from_btf(&btf)?;
        let hooks = KernelHooks::probe(&btf);
        let aya_btf = aya::Btf::from_sys_fs().map_err(|source| {
            LoadError::Btf(BtfError::Read {
                path: crate::btf::VMLINUX_BTF.to_owned(),
                source: std::io::Error::other(source.to_string()),
            })
        })?;

        let cabi = layout.cap_capable_abi as u32;
        let cgroup_id = options.cgroup_id.unwrap_or(0);
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&aya_btf))
            .override_global(globals::TARGET_CGROUP_ID, &cgroup_id, true)
            .override_global(
                globals::TASK_REAL_CRED_OFFSET,
                &layout.task_real_cred_offset,
                true,
            )
            .override_global(globals::TASK_FLAGS_OFFSET, &layout.task_flags_offset, true)
            .override_global(globals::CRED_EUID_OFFSET, &layout.cred_euid_offset, true)
            .override_global(
                globals::PT_REGS_SYSCALL_NR_OFFSET,
                &layout.pt_regs_syscall_nr_offset,
                true,
            )
            .override_global(globals::CAP_CAPABLE_ABI, &cabi, true)
            .map_max_entries(EVENTS_MAP, options.events_bytes)
            .load(object)
            .map_err(|source| LoadError::Object {
                source: Box::new(source),
            })?;

        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                debug!(%error, "eBPF diagnostics are unavailable");
                None
            }
        };

        let mut skipped = Vec::new();
        for &mode in options.attach.candidates() {
            if let Some(reason) = hooks.rules_out(mode) {
                skipped.push(SkippedMode { mode, reason });
                continue;
            }
            match attach(&mut ebpf, &aya_btf, mode) {
                Ok(()) => {
                    let choice = AttachChoice { mode, skipped };
                    info!(mode = %choice.mode, "tracing cap_capable with {}", choice.explain());
                    return Ok(Self {
                        ebpf,
                        choice,
                        layout,
                        logger,
                    });
                }
                Err(error) => {
                    let reason = describe_program_error(&error);
                    warn!(%mode, %reason, "attach path unavailable");
                    skipped.push(SkippedMode { mode, reason });
                }
            }
        }
        Err(LoadError::NoAttachPath {
            requested: options.attach,
            attempts: skipped,
        })
    }

    /// The attach path in use and why the stronger ones were skipped.
    pub fn attach_choice(&self) -> &AttachChoice {
        &self.choice
    }

    /// The kernel layout the program was given.
    pub fn kernel_layout(&self) -> KernelLayout {
        self.layout
    }

    /// The loaded object, for the collector to take its maps from.
    pub(crate) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Forwards the program's diagnostics (aya-log) to `tracing`.
    pub fn flush_diagnostics(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }
}

fn attach(ebpf: &mut Ebpf, btf: &aya::Btf, mode: AttachMode) -> Result<(), ProgramError> {
    match mode {
        AttachMode::Fentry => {
            let program: &mut FExit = program(ebpf, FEXIT_PROGRAM)?.try_into()?;
            program.load(HOOKED_FUNCTION, btf)?;
            if let Err(error) = program.attach() {
                let _ = program.unload();
                return Err(error);
            }
        }
        AttachMode::Kprobe => {
            // The return probe goes first so that no entry is ever stashed without a reader.
            let attached = attach_kprobe(ebpf, KRETPROBE_PROGRAM)
                .and_then(|()| attach_kprobe(ebpf, KPROBE_PROGRAM));
            if attached.is_err() {
                for name in [KPROBE_PROGRAM, KRETPROBE_PROGRAM] {
                    if let Ok(probe) = program(ebpf, name).and_then(<&mut KProbe>::try_from) {
                        let _ = probe.unload();
                    }
                }
            }
            attached?;
        }
        AttachMode::Tracepoint => {
            let program: &mut BtfTracePoint = program(ebpf, TRACEPOINT_PROGRAM)?.try_into()?;
            program.load(HOOKED_FUNCTION, btf)?;
            if let Err(error) = program.attach() {
                let _ = program.unload();
                return Err(error);
            }
        }
    }
    Ok(())
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut aya::programs::Program, ProgramError> {
    ebpf.program_mut(name)
        .ok_or(ProgramError::UnexpectedProgramType)
}

fn attach_kprobe(ebpf: &mut Ebpf, name: &str) -> Result<(), ProgramError> {
    let probe: &mut KProbe = program(ebpf, name)?.try_into()?;
    probe.load()?;
    probe.attach(HOOKED_FUNCTION, 0)?;
    Ok(())
}

/// A short reason for a failed load or attach; the verifier log only when the verifier spoke.
fn describe_program_error(error: &ProgramError) -> String {
    match error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(6)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            match io_error.raw_os_error() {
                Some(libc::EPERM) => format!(
                    "the kernel refused to load the program ({io_error}); tracing programs may be \
                     blocked by the kernel's lockdown mode or by the platform"
                ),
                _ if tail.is_empty() => {
                    format!("the kernel refused to load the program ({io_error})")
                }
                _ => format!(
                    "the verifier rejected the program ({io_error}): {}",
                    tail.join(" | ")
                ),
            }
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(inner) = source {
                text.push_str(": ");
                text.push_str(&inner.to_string());
                source = inner.source();
            }
            text
        }
    }
}

/// Kernels before 5.11 charge BPF maps against `RLIMIT_MEMLOCK`; lift it where allowed.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!(error = %std::io::Error::last_os_error(), "could not raise RLIMIT_MEMLOCK");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_mode_errors_name_the_kernel_feature() {
        let error = LoadError::NoAttachPath {
            requested: AttachRequest::Kprobe,
            attempts: vec![SkippedMode {
                mode: AttachMode::Kprobe,
                reason: "this kernel has no kprobe PMU".into(),
            }],
        };
        let message = error.to_string();
        assert!(
            message.contains("--attach kprobe cannot be used"),
            "{message}"
        );
        assert!(message.contains("CONFIG_KPROBES"), "{message}");
        assert!(message.contains("--attach auto"), "{message}");
    }
}
