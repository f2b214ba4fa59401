//! Loads capprof's eBPF program into the kernel and attaches it to `cap_capable`.
//!
//! [`Tracer`] owns the loaded object and its links: dropping it detaches everything. The maps are
//! read through [`crate::collector::KernelCollector`].

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData},
    programs::{BtfTracePoint, FExit, KProbe, ProgramError, links::FdLink},
};
use std::path::{Path, PathBuf};

use capprof_common::{
    CALL_SITES_MAP, CHECK_COUNTS_MAP, COUNTERS_MAP, EVENTS_MAP, FEXIT_PROGRAM, HOOKED_FUNCTION,
    HOT_SLOTS_MAP, KERNEL_STACKS_MAP, KPROBE_PROGRAM, KRETPROBE_PROGRAM, PENDING_CHECKS_MAP,
    TRACEPOINT_PROGRAM, globals,
};
use tracing::{debug, info};

use crate::{
    attach::{AttachChoice, AttachMode, AttachRequest, KernelHooks, SkippedMode},
    btf::{Btf, BtfError},
    kernel_layout::KernelLayout,
    privileges,
};

/// The eBPF object built by `build.rs`; empty when built with `AYA_BUILD_SKIP=1`.
static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capprof"));

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
    #[error(
        "the tracer an earlier daemon left pinned at {} attaches with {pinned}, not the --attach {} asked for: \
         start with --attach {pinned} (or auto), or detach it with `capprof unload` first (stored profiles are kept; \
         checks since the earlier daemon last stored are not)",
        .pin_dir.display(),
        forced_name(*.requested)
    )]
    PinnedModeDiffers {
        pin_dir: PathBuf,
        pinned: AttachMode,
        requested: AttachRequest,
    },
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
    #[error(
        "cannot keep the tracer pinned at {path}: {message} (is bpffs mounted? mount -t bpf bpf /sys/fs/bpf)"
    )]
    Pin { path: PathBuf, message: String },
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
///
/// Either loaded by this process ([`Tracer::load`]), or found pinned in bpffs where an earlier
/// daemon left it running ([`Tracer::load_pinned`]). Dropping it detaches the program unless its
/// links are pinned.
pub struct Tracer {
    /// The object, when this process loaded it.
    ebpf: Option<Ebpf>,
    /// Links not pinned: they keep the program attached while this process lives.
    links: Vec<NamedLink>,
    /// Maps opened from bpffs pins, when resumed.
    pinned_maps: Vec<(&'static str, MapData)>,
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
        prepare_process()?;

        let btf = Btf::from_kernel()?;
        let layout = KernelLayout::from_btf(&btf)?;
        let hooks = KernelHooks::probe(&btf);
        let aya_btf = kernel_btf_for_aya()?;

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
            .override_global(globals::TASK_COMM_OFFSET, &layout.task_comm_offset, true)
            .override_global(
                globals::TASK_CGROUPS_OFFSET,
                &layout.task_cgroups_offset,
                true,
            )
            .override_global(
                globals::CSS_SET_DFL_CGRP_OFFSET,
                &layout.css_set_dfl_cgrp_offset,
                true,
            )
            .override_global(globals::CGROUP_KN_OFFSET, &layout.cgroup_kn_offset, true)
            .override_global(
                globals::KERNFS_NODE_ID_OFFSET,
                &layout.kernfs_node_id_offset,
                true,
            )
            .override_global(
                globals::KERNFS_NODE_NAME_OFFSET,
                &layout.kernfs_node_name_offset,
                true,
            )
            .override_global(globals::CRED_EUID_OFFSET, &layout.cred_euid_offset, true)
            .override_global(
                globals::PT_REGS_SYSCALL_NR_OFFSET,
                &layout.pt_regs_syscall_nr_offset,
                true,
            )
            .override_global(globals::CAP_CAPABLE_ABI, &cabi, true)
            .map_max_entries(EVENTS_MAP, options.events_bytes)
            .load(object)
            .map_err(object_error)?;

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
                Ok(links) => {
                    let choice = AttachChoice { mode, skipped };
                    info!(mode = %choice.mode, "tracing cap_capable with {}", choice.explain());
                    return Ok(Self {
                        ebpf: Some(ebpf),
                        links,
                        pinned_maps: Vec::new(),
                        choice,
                        layout,
                        logger,
                    });
                }
                Err(error) => {
                    let reason = describe_program_error(&error);
                    debug!(%mode, %reason, "attach path unavailable");
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

    /// Hands a map to the collector; each map can be taken once.
    pub(crate) fn take_map(&mut self, name: &str) -> Option<Map> {
        if let Some(ebpf) = &mut self.ebpf {
            return ebpf.take_map(name);
        }
        let index = self
            .pinned_maps
            .iter()
            .position(|(pinned, _)| *pinned == name)?;
        let (name, data) = self.pinned_maps.swap_remove(index);
        Some(match name {
            CHECK_COUNTS_MAP => Map::PerCpuHashMap(data),
            EVENTS_MAP => Map::RingBuf(data),
            KERNEL_STACKS_MAP => Map::StackTraceMap(data),
            COUNTERS_MAP | HOT_SLOTS_MAP => Map::PerCpuArray(data),
            _ => Map::HashMap(data),
        })
    }

    /// Whether this tracer was found running in bpffs rather than loaded now.
    pub fn is_resumed(&self) -> bool {
        self.ebpf.is_none()
    }

    /// Loads the tracer host-wide and pins its maps and links under `pin_root`, or resumes the
    /// one an earlier process pinned there, so that checks made while no process reads the maps
    /// are still counted. Only the same eBPF object (and ring-buffer size) is resumed: pins of
    /// other builds are removed.
    pub fn load_pinned(options: &TracerOptions, pin_root: &Path) -> Result<Self, LoadError> {
        if options.cgroup_id.is_some() {
            return Err(LoadError::Pin {
                path: pin_root.to_owned(),
                message: "a pinned tracer always traces every cgroup".to_owned(),
            });
        }
        let pin_error = |path: &Path, error: &dyn std::fmt::Display| LoadError::Pin {
            path: path.to_owned(),
            message: error.to_string(),
        };
        let fingerprint = format!("{:016x}", object_fingerprint(options.events_bytes));
        let pin_dir = pin_root.join(&fingerprint);
        std::fs::create_dir_all(pin_root).map_err(|error| pin_error(pin_root, &error))?;
        remove_stale_pins(pin_root, &fingerprint);

        if let Some(mode) = pinned_mode(&pin_dir) {
            if !options.attach.candidates().contains(&mode) {
                return Err(LoadError::PinnedModeDiffers {
                    pin_dir,
                    pinned: mode,
                    requested: options.attach,
                });
            }
            let mut pinned_maps = Vec::new();
            for name in PINNED_MAPS {
                let path = pin_dir.join(name);
                let data = MapData::from_pin(&path).map_err(|error| pin_error(&path, &error))?;
                pinned_maps.push((name, data));
            }
            let btf = Btf::from_kernel()?;
            let layout = KernelLayout::from_btf(&btf)?;
            info!(%mode, dir = %pin_dir.display(), "resuming the tracer left pinned by an earlier daemon");
            return Ok(Self {
                ebpf: None,
                links: Vec::new(),
                pinned_maps,
                // Why this mode was chosen is the daemon's to remember (bpffs holds no files).
                choice: AttachChoice {
                    mode,
                    skipped: Vec::new(),
                },
                layout,
                logger: None,
            });
        }

        // Half-written pins from an interrupted start: start over.
        let _ = remove_pin_dir(&pin_dir);
        std::fs::create_dir_all(&pin_dir).map_err(|error| pin_error(&pin_dir, &error))?;
        let mut tracer = Self::load(options)?;
        let ebpf = tracer.ebpf.as_mut().expect("freshly loaded");
        for name in PINNED_MAPS {
            let path = pin_dir.join(name);
            let map = ebpf
                .map(name)
                .ok_or_else(|| pin_error(&path, &"missing from the object"))?;
            map.pin(&path).map_err(|error| pin_error(&path, &error))?;
        }
        let mut unpinned = Vec::new();
        for (name, link) in tracer.links.drain(..) {
            match link {
                AttachedLink::Fd(link) => {
                    let path = pin_dir.join(name);
                    link.pin(&path).map_err(|error| pin_error(&path, &error))?;
                }
                perf @ AttachedLink::PerfEvent(_) => {
                    tracing::warn!(
                        "this kernel attaches kprobes through perf events, which cannot be pinned: \
                         checks made while the daemon is down will not be counted"
                    );
                    unpinned.push((name, perf));
                }
            }
        }
        tracer.links = unpinned;
        Ok(tracer)
    }

    /// Detaches a pinned tracer by removing its pins (all builds' pins under `pin_root`).
    pub fn unpin_all(pin_root: &Path) -> std::io::Result<()> {
        match std::fs::read_dir(pin_root) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    remove_pin_dir(&entry.path())?;
                }
                std::fs::remove_dir(pin_root)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Forwards the program's diagnostics (aya-log) to `tracing`.
    pub fn flush_diagnostics(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }
}

/// The embedded eBPF object, or why this build has none.
pub(crate) fn program_object() -> Result<&'static [u8], LoadError> {
    if PROGRAM_OBJECT.is_empty() {
        return Err(LoadError::NoProgramObject);
    }
    Ok(PROGRAM_OBJECT)
}

/// Checks that this process may load tracing programs and lifts the memlock limit.
pub(crate) fn prepare_process() -> Result<(), LoadError> {
    let missing = privileges::effective_capabilities()
        .map(privileges::missing_for_tracing)
        .unwrap_or_default();
    if !missing.is_empty() {
        return Err(LoadError::MissingPrivileges { missing });
    }
    raise_memlock_limit();
    Ok(())
}

/// The kernel's BTF in aya's form, for loading and for `tp_btf`/`fexit` attach targets.
pub(crate) fn kernel_btf_for_aya() -> Result<aya::Btf, LoadError> {
    aya::Btf::from_sys_fs().map_err(|source| {
        LoadError::Btf(BtfError::Read {
            path: crate::btf::VMLINUX_BTF.to_owned(),
            source: std::io::Error::other(source.to_string()),
        })
    })
}

pub(crate) fn object_error(source: aya::EbpfError) -> LoadError {
    LoadError::Object {
        source: Box::new(source),
    }
}

/// Loads the `tp_btf` program `name` on the `cap_capable` tracepoint, attaches it and hands its
/// link over; unloads the program again when attaching fails.
pub(crate) fn attach_cap_capable_tracepoint(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    name: &str,
) -> Result<FdLink, ProgramError> {
    let program: &mut BtfTracePoint = program(ebpf, name)?.try_into()?;
    program.load(HOOKED_FUNCTION, btf)?;
    match program.attach().and_then(|id| program.take_link(id)) {
        Ok(link) => Ok(FdLink::from(link)),
        Err(error) => {
            let _ = program.unload();
            Err(error)
        }
    }
}

/// The maps a pinned tracer keeps in bpffs, by their names in the object.
const PINNED_MAPS: [&str; 7] = [
    HOT_SLOTS_MAP,
    CHECK_COUNTS_MAP,
    CALL_SITES_MAP,
    KERNEL_STACKS_MAP,
    EVENTS_MAP,
    COUNTERS_MAP,
    PENDING_CHECKS_MAP,
];

/// A stable hash (FNV-1a) of what must match for pinned state to be reused.
fn object_fingerprint(events_bytes: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in PROGRAM_OBJECT.iter().chain(&events_bytes.to_le_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The attach mode of a pinned tracer, read from its link pins' names.
fn pinned_mode(pin_dir: &Path) -> Option<AttachMode> {
    let has = |name: &str| pin_dir.join(name).exists();
    if has("link-fentry") {
        Some(AttachMode::Fentry)
    } else if has("link-kprobe-entry") && has("link-kprobe-return") {
        Some(AttachMode::Kprobe)
    } else if has("link-tracepoint") {
        Some(AttachMode::Tracepoint)
    } else {
        None
    }
}

fn remove_stale_pins(pin_root: &Path, current: &str) {
    let Ok(entries) = std::fs::read_dir(pin_root) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name() != current {
            tracing::warn!(dir = %entry.path().display(), "removing the pins of another capprof build");
            let _ = remove_pin_dir(&entry.path());
        }
    }
}

/// Removes a directory of pins: bpffs files are unlinked one by one.
fn remove_pin_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                std::fs::remove_file(entry.path())?;
            }
            std::fs::remove_dir(dir)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// An attached program's link, named for its pin file.
type NamedLink = (&'static str, AttachedLink);

/// A link that keeps a program attached while it lives.
#[derive(Debug)]
enum AttachedLink {
    /// A BPF link: can be pinned to outlive the process.
    Fd(FdLink),
    /// A kprobe attached through a perf event (kernels before 5.15): dies with the process.
    PerfEvent(
        #[allow(dead_code, reason = "held only to keep the kprobe attached")]
        aya::programs::kprobe::KProbeLink,
    ),
}

/// Attaches `mode`'s programs and hands their links over, so that they can be pinned.
fn attach(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    mode: AttachMode,
) -> Result<Vec<NamedLink>, ProgramError> {
    match mode {
        AttachMode::Fentry => {
            let program: &mut FExit = program(ebpf, FEXIT_PROGRAM)?.try_into()?;
            program.load(HOOKED_FUNCTION, btf)?;
            match program.attach().and_then(|id| program.take_link(id)) {
                Ok(link) => Ok(vec![("link-fentry", AttachedLink::Fd(FdLink::from(link)))]),
                Err(error) => {
                    let _ = program.unload();
                    Err(error)
                }
            }
        }
        AttachMode::Kprobe => {
            // The return probe goes first so that no entry is ever stashed without a reader.
            let attached =
                attach_kprobe(ebpf, KRETPROBE_PROGRAM, "link-kprobe-return").and_then(|ret| {
                    attach_kprobe(ebpf, KPROBE_PROGRAM, "link-kprobe-entry")
                        .map(|entry| vec![ret, entry])
                });
            if attached.is_err() {
                for name in [KPROBE_PROGRAM, KRETPROBE_PROGRAM] {
                    if let Ok(probe) = program(ebpf, name).and_then(<&mut KProbe>::try_from) {
                        let _ = probe.unload();
                    }
                }
            }
            attached
        }
        AttachMode::Tracepoint => Ok(vec![(
            "link-tracepoint",
            AttachedLink::Fd(attach_cap_capable_tracepoint(
                ebpf,
                btf,
                TRACEPOINT_PROGRAM,
            )?),
        )]),
    }
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut aya::programs::Program, ProgramError> {
    ebpf.program_mut(name)
        .ok_or(ProgramError::UnexpectedProgramType)
}

fn attach_kprobe(
    ebpf: &mut Ebpf,
    name: &str,
    link_name: &'static str,
) -> Result<NamedLink, ProgramError> {
    let probe: &mut KProbe = program(ebpf, name)?.try_into()?;
    probe.load()?;
    let link = probe
        .attach(HOOKED_FUNCTION, 0)
        .and_then(|id| probe.take_link(id))?;
    let link = if aya::features().bpf_perf_link() {
        // With perf links (Linux 5.15+) the kprobe's link is a BPF link like the others.
        AttachedLink::Fd(
            FdLink::try_from(link)
                .map_err(|error| ProgramError::IOError(std::io::Error::other(error)))?,
        )
    } else {
        AttachedLink::PerfEvent(link)
    };
    Ok((link_name, link))
}

/// A short reason for a failed load or attach; the verifier log only when the verifier spoke.
pub(crate) fn describe_program_error(error: &ProgramError) -> String {
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
