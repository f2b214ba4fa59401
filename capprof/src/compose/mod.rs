//! Compose files: write each profiled service's minimal capabilities into them (`compose
//! apply`) and gate CI on them (`compose check`).
//!
//! The editor is span based: it parses the YAML with positions, finds each service's
//! `cap_add`, `cap_drop` and `privileged` keys, and splices new text only there; every other
//! byte (comments, ordering, anchors, quoting, other services) is copied verbatim. Every
//! planned edit is re-parsed and re-resolved before anything is shown or written.
//! `docs/compose.md` describes the editing rules, the multi-file behaviour and the
//! check's JSON format.
//!
//! ```no_run
//! use capprof::capability::Capability;
//! use capprof::compose::{self, ApplyOptions, ComposeProject, Recommendations, ServiceRecommendation};
//!
//! let mut recommendations = Recommendations::new();
//! recommendations.insert(
//!     "web",
//!     ServiceRecommendation::new([(Capability::NetBindService, "bind port 80".to_owned())]),
//! );
//! let project = ComposeProject::load(&["docker-compose.yml"])?;
//! let plan = compose::plan_apply(&project, &recommendations, &ApplyOptions::default())?;
//! print!("{}", plan.unified_diff());
//! plan.write()?;
//! let report = compose::check(&ComposeProject::load(&["docker-compose.yml"])?, &recommendations)?;
//! assert!(report.is_clean());
//! # Ok::<(), compose::ComposeError>(())
//! ```

mod apply;
mod atomic;
mod check;
mod editor;
mod error;
mod file;
mod project;
mod recommendation;
mod settings;
mod yaml;

pub use apply::{
    ApplyOptions, ApplyPlan, ApplyReport, FileChange, PrivilegedPolicy, ServiceUpdate,
    apply_to_text, plan_apply,
};
pub use atomic::{FileSnapshot, write_atomically};
pub use check::{CheckReport, MissingCapability, ServiceCheck, check};
pub use error::ComposeError;
pub use project::ComposeProject;
pub use recommendation::{NeededCapability, Recommendations, ServiceRecommendation};
pub use settings::{CapSet, CapSettings};
