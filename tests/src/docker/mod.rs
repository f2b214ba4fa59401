//! A real Docker engine for the integration tests: found or started ([`DockerEngine::ensure`]),
//! the busybox test image ([`busybox_image`]) and containers removed when dropped
//! ([`ContainerBuilder`], [`TestContainer`]).

mod baseline;
mod container;
mod engine;
mod image;
mod process;

pub use container::{ContainerBuilder, NAME_PREFIX, TestContainer, unique_name};
pub use engine::{DEFAULT_SOCKET, DockerEngine, EngineUse, HARNESS_SOCKET, HarnessError};
pub use image::{BUSYBOX_IMAGE, busybox_image};

/// The engine with the test image built, or `None` after [`crate::ci::skip_or_fail`] said why.
#[track_caller]
pub fn engine_or_skip() -> Option<EngineUse> {
    let engine = crate::ci::require(DockerEngine::ensure(), "no Docker engine")?;
    crate::ci::require(
        busybox_image(&engine),
        "cannot build the busybox test image",
    )?;
    Some(engine)
}
