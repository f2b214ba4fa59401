//! The benchmark's floor: a program on the same `cap_capable` tracepoint that does nothing.
//!
//! What capprof adds to a capability check is only meaningful next to what *any* program on that
//! hook costs, so the benchmark measures [`EmptyProgram`] in the same run as the real tracer.

use aya::{Ebpf, EbpfLoader, programs::links::FdLink};
use capprof_common::EMPTY_TRACEPOINT_PROGRAM;

use crate::loader::{self, LoadError};

/// Why the empty program could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "cannot attach the empty program to the capability:cap_capable tracepoint (needs Linux 6.14+ with BTF): {reason}"
    )]
    Attach { reason: String },
}

/// The empty `tp_btf` program, attached to `capability:cap_capable`; dropping it detaches it.
pub struct EmptyProgram {
    /// Dropped first: closing the link detaches the program.
    _link: FdLink,
    _ebpf: Ebpf,
    program_id: u32,
}

impl std::fmt::Debug for EmptyProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmptyProgram")
            .field("program_id", &self.program_id)
            .finish_non_exhaustive()
    }
}

impl EmptyProgram {
    /// Loads capprof's eBPF object and attaches only its empty tracepoint program.
    pub fn attach() -> Result<Self, BaselineError> {
        let object = loader::program_object()?;
        loader::prepare_process()?;
        let btf = loader::kernel_btf_for_aya()?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .load(object)
            .map_err(loader::object_error)?;
        let attach_error = |error| BaselineError::Attach {
            reason: loader::describe_program_error(&error),
        };
        let link = loader::attach_cap_capable_tracepoint(&mut ebpf, &btf, EMPTY_TRACEPOINT_PROGRAM)
            .map_err(attach_error)?;
        let program_id = ebpf
            .program(EMPTY_TRACEPOINT_PROGRAM)
            .ok_or(aya::programs::ProgramError::UnexpectedProgramType)
            .and_then(|program| program.info())
            .map_err(attach_error)?
            .id();
        Ok(Self {
            _link: link,
            _ebpf: ebpf,
            program_id,
        })
    }

    /// The kernel's id for the attached program (`bpftool prog show id <id>`).
    pub fn program_id(&self) -> u32 {
        self.program_id
    }
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
