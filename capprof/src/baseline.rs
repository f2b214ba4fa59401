//! The benchmark's floor: a program on the same hook as capprof's tracer that does nothing.
//!
//! What capprof adds to a capability check is only meaningful next to what *any* program on that
//! hook costs, so the benchmark measures [`EmptyProgram`] in the same run as the real tracer, on
//! the same attach path: an empty `tp_btf` program on the `capability:cap_capable` tracepoint, an
//! empty fexit program on `cap_capable`, or an empty kprobe + kretprobe pair (the kprobe path
//! needs both, so its floor does too).

use aya::{
    Ebpf, EbpfLoader,
    programs::{FExit, KProbe, ProgramError, links::FdLink},
};
use capprof_common::{
    EMPTY_FEXIT_PROGRAM, EMPTY_KPROBE_PROGRAMS, EMPTY_TRACEPOINT_PROGRAM, HOOKED_FUNCTION,
};

use crate::{
    attach::AttachMode,
    loader::{self, LoadError},
};

/// Why the empty program could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "cannot attach the empty {mode} program to cap_capable ({}): {reason}",
        mode.requirement()
    )]
    Attach { mode: AttachMode, reason: String },
}

/// The empty program(s) of one attach path; dropping the value detaches them.
pub struct EmptyProgram {
    /// Dropped first: closing the link detaches the tracepoint program. The fexit and kprobe
    /// programs keep their links inside `_ebpf` and are detached when it drops.
    _link: Option<FdLink>,
    _ebpf: Ebpf,
    mode: AttachMode,
    program_id: u32,
}

impl std::fmt::Debug for EmptyProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmptyProgram")
            .field("mode", &self.mode)
            .field("program_id", &self.program_id)
            .finish_non_exhaustive()
    }
}

impl EmptyProgram {
    /// Loads capprof's eBPF object and attaches only its empty tracepoint program.
    pub fn attach() -> Result<Self, BaselineError> {
        Self::attach_to(AttachMode::Tracepoint)
    }

    /// Loads capprof's eBPF object and attaches only the empty program(s) of `mode`.
    pub fn attach_to(mode: AttachMode) -> Result<Self, BaselineError> {
        let object = loader::program_object()?;
        loader::prepare_process()?;
        let btf = loader::kernel_btf_for_aya()?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .load(object)
            .map_err(loader::object_error)?;
        let attach_error = |error| BaselineError::Attach {
            mode,
            reason: loader::describe_program_error(&error),
        };
        let (link, first_program) = match mode {
            AttachMode::Tracepoint => (
                Some(
                    loader::attach_cap_capable_tracepoint(
                        &mut ebpf,
                        &btf,
                        EMPTY_TRACEPOINT_PROGRAM,
                    )
                    .map_err(attach_error)?,
                ),
                EMPTY_TRACEPOINT_PROGRAM,
            ),
            AttachMode::Fentry => {
                let fexit: &mut FExit = program(&mut ebpf, EMPTY_FEXIT_PROGRAM)
                    .and_then(TryInto::try_into)
                    .map_err(attach_error)?;
                fexit
                    .load(HOOKED_FUNCTION, &btf)
                    .and_then(|()| fexit.attach())
                    .map_err(attach_error)?;
                (None, EMPTY_FEXIT_PROGRAM)
            }
            AttachMode::Kprobe => {
                for name in EMPTY_KPROBE_PROGRAMS {
                    let probe: &mut KProbe = program(&mut ebpf, name)
                        .and_then(TryInto::try_into)
                        .map_err(attach_error)?;
                    probe
                        .load()
                        .and_then(|()| probe.attach(HOOKED_FUNCTION, 0))
                        .map_err(attach_error)?;
                }
                (None, EMPTY_KPROBE_PROGRAMS[0])
            }
        };
        let program_id = ebpf
            .program(first_program)
            .ok_or(ProgramError::UnexpectedProgramType)
            .and_then(|program| program.info())
            .map_err(attach_error)?
            .id();
        Ok(Self {
            _link: link,
            _ebpf: ebpf,
            mode,
            program_id,
        })
    }

    /// The attach path whose floor this is.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The kernel's id for the attached program (`bpftool prog show id <id>`); for the kprobe
    /// path, the entry probe's.
    pub fn program_id(&self) -> u32 {
        self.program_id
    }
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut aya::programs::Program, ProgramError> {
    ebpf.program_mut(name)
        .ok_or(ProgramError::UnexpectedProgramType)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links_to(program_id: u32) -> usize {
        aya::programs::loaded_links()
            .filter_map(Result::ok)
            .filter(|link| link.program_id() == program_id)
            .count()
    }

    #[test]
    fn attaches_while_held_and_detaches_on_drop() {
        let program = match EmptyProgram::attach() {
            Ok(program) => program,
            Err(BaselineError::Load(error)) => {
                return crate::test_support::skip_unless_ci(&error.to_string());
            }
            Err(error) => panic!("{error}"),
        };
        let id = program.program_id();
        assert_eq!(links_to(id), 1, "program {id} is attached by one link");
        drop(program);
        assert_eq!(links_to(id), 0, "program {id} is detached after drop");
    }
}
