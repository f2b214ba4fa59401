//! A live tracing session: the loaded tracer, its collector and the table of checks, polled
//! together. `capprof trace`, the benchmark driver and the tests all run one of these.

use capprof_common::CheckKey;

use crate::{
    attach::AttachChoice,
    checks::CheckTable,
    collector::{CollectError, KernelCollector},
    kallsyms::{KallsymsError, KernelSymbols},
    loader::{LoadError, Tracer, TracerOptions},
};

/// Why a session could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot name kernel stack frames: {0}")]
    Symbols(#[from] KallsymsError),
    #[error(transparent)]
    Collect(#[from] CollectError),
}

/// The tracer, loaded and attached, with everything it has reported so far.
#[derive(Debug)]
pub struct TraceSession {
    tracer: Tracer,
    collector: KernelCollector,
    table: CheckTable,
}

impl TraceSession {
    /// Loads and attaches the tracer.
    pub fn start(options: &TracerOptions) -> Result<Self, TraceError> {
        Self::with_tracer(Tracer::load(options)?)
    }

    /// Reads an already loaded (or resumed) tracer.
    pub fn with_tracer(mut tracer: Tracer) -> Result<Self, TraceError> {
        let collector = KernelCollector::new(&mut tracer)?;
        let table = CheckTable::new(KernelSymbols::load()?);
        Ok(Self {
            tracer,
            collector,
            table,
        })
    }

    /// Whether the tracer was resumed from bpffs pins rather than loaded now.
    pub fn is_resumed(&self) -> bool {
        self.tracer.is_resumed()
    }

    /// Reads the kernel's maps; returns the keys that changed since the last poll.
    pub fn poll(&mut self) -> Result<Vec<CheckKey>, TraceError> {
        self.tracer.flush_diagnostics();
        let collection = self.collector.collect()?;
        Ok(self.table.apply(collection))
    }

    /// Forgets cgroups that are gone and fully folded, in the kernel's maps and in the table.
    pub fn forget_cgroups(
        &mut self,
        cgroups: &std::collections::HashSet<u64>,
    ) -> Result<(), TraceError> {
        self.collector.forget_cgroups(cgroups)?;
        self.table.forget_cgroups(cgroups);
        Ok(())
    }

    /// Everything seen so far.
    pub fn table(&self) -> &CheckTable {
        &self.table
    }

    /// The attach path in use.
    pub fn attach_choice(&self) -> &AttachChoice {
        self.tracer.attach_choice()
    }
}
