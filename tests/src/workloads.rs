//! The workload corpus (`tests/workloads/`): small programs on the busybox image whose exit
//! status says whether they worked, each with the minimal capability set it truly needs.
//!
//! Each workload is a directory with `workload.sh` (run as `sh -c <script>` in the corpus image)
//! and `workload.yaml`:
//!
//! ```yaml
//! summary: what it does and why it needs what it needs
//! docker_options: ["--sysctl=net.ipv4.ip_unprivileged_port_start=1024"]  # also in verify's re-runs
//! profile_cap_add: [SYS_NICE]   # added to Docker's defaults while profiling, where the defaults
//!                               # cannot show the need (the operation would be refused first)
//! cap_add: [SYS_NICE]           # the true minimal set
//! dangerous: {SYS_ADMIN: "hostname:"}   # flagged capabilities, and what their alternative says
//! report_mentions: [open_by_handle_at]  # text the JSON report must contain
//! profile_exit: 1               # when a need is denied while profiling (default 0)
//! ```
//!
//! The corpus image (`tests/workloads/Dockerfile`) is the busybox test image plus files owned
//! by another uid, which a workload could not create itself without CHOWN.

use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::docker::{DockerEngine, HarnessError, busybox_image};

/// Where the corpus lives.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads")
}

/// One workload's expectations, from its `workload.yaml`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    pub summary: String,
    #[serde(default)]
    pub docker_options: Vec<String>,
    #[serde(default)]
    pub profile_cap_add: Vec<String>,
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub dangerous: BTreeMap<String, String>,
    #[serde(default)]
    pub report_mentions: Vec<String>,
    /// The profiled run's exit status: 0 unless a need is denied while profiling.
    #[serde(default)]
    pub profile_exit: i64,
}

/// A workload of the corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub script: String,
    pub spec: WorkloadSpec,
}

impl Workload {
    /// The `docker run` options for profiling: the workload's own, plus its profiling caps.
    pub fn profile_options(&self) -> Vec<String> {
        self.spec
            .docker_options
            .iter()
            .cloned()
            .chain(
                self.spec
                    .profile_cap_add
                    .iter()
                    .map(|capability| format!("--cap-add={capability}")),
            )
            .collect()
    }
}

/// Why the corpus cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid workload description: {source}")]
    Spec {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
}

/// Every workload, in name order.
pub fn load_corpus() -> Result<Vec<Workload>, CorpusError> {
    let dir = corpus_dir();
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| CorpusError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let entries = std::fs::read_dir(&dir).map_err(|source| CorpusError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut workloads = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let spec_path = path.join("workload.yaml");
        let spec: WorkloadSpec =
            serde_yaml_ng::from_str(&read(&spec_path)?).map_err(|source| CorpusError::Spec {
                path: spec_path.clone(),
                source,
            })?;
        workloads.push(Workload {
            name: entry.file_name().to_string_lossy().into_owned(),
            script: read(&path.join("workload.sh"))?,
            spec,
        });
    }
    workloads.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(workloads)
}

/// Builds the corpus image (once per content of its Dockerfile) and returns its tag.
pub fn workloads_image(engine: &DockerEngine) -> Result<String, HarnessError> {
    busybox_image(engine)?;
    let dir = corpus_dir();
    let dockerfile = dir.join("Dockerfile");
    let text = std::fs::read_to_string(&dockerfile).map_err(|source| HarnessError::Io {
        action: "cannot read",
        path: dockerfile.clone(),
        source,
    })?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    let tag = format!("capprof-test/workloads:{:016x}", hasher.finish());
    if engine
        .cli(["image", "inspect", "--format", "{{.Id}}", &tag])
        .is_ok()
    {
        return Ok(tag);
    }
    // Only the Dockerfile goes to the builder: the scripts are passed as commands.
    let context =
        std::env::temp_dir().join(format!("capprof-workloads-context-{}", std::process::id()));
    std::fs::create_dir_all(&context).map_err(|source| HarnessError::Io {
        action: "cannot create",
        path: context.clone(),
        source,
    })?;
    let copied = std::fs::write(context.join("Dockerfile"), &text);
    let built = copied
        .map_err(|source| HarnessError::Io {
            action: "cannot write",
            path: context.join("Dockerfile"),
            source,
        })
        .and_then(|()| {
            let mut command = engine.command();
            command
                .env("DOCKER_BUILDKIT", "0")
                .args(["build", "--quiet", "--tag", &tag])
                .arg(&context);
            let output = command.output().map_err(|source| HarnessError::Io {
                action: "cannot run",
                path: command.get_program().into(),
                source,
            })?;
            if output.status.success() {
                Ok(())
            } else {
                Err(HarnessError::Cli {
                    command: format!("docker build --tag {tag}"),
                    status: output.status.to_string(),
                    stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                })
            }
        });
    let _ = std::fs::remove_dir_all(&context);
    built.map(|()| tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_has_a_script_and_a_valid_description() {
        let corpus = load_corpus().expect("the corpus reads");
        assert!(corpus.len() >= 12, "the issue asks for at least 12");
        for workload in &corpus {
            assert!(
                !workload.script.trim().is_empty(),
                "{}: empty script",
                workload.name
            );
            assert!(!workload.spec.summary.is_empty(), "{}", workload.name);
            for capability in workload
                .spec
                .cap_add
                .iter()
                .chain(&workload.spec.profile_cap_add)
                .chain(workload.spec.dangerous.keys())
            {
                assert!(
                    capability
                        .parse::<capprof::capability::Capability>()
                        .is_ok(),
                    "{}: {capability} is no capability",
                    workload.name
                );
            }
            let mut sorted = workload.spec.cap_add.clone();
            sorted.sort();
            assert_eq!(
                sorted, workload.spec.cap_add,
                "{}: keep cap_add sorted, as reports are",
                workload.name
            );
        }
    }

    #[test]
    fn options_for_profiling_add_the_profiling_capabilities() {
        let workload = Workload {
            name: "renice".into(),
            script: "renice -n -5 -p $$".into(),
            spec: WorkloadSpec {
                summary: "s".into(),
                docker_options: vec!["--user=0".into()],
                profile_cap_add: vec!["SYS_NICE".into()],
                cap_add: vec!["SYS_NICE".into()],
                dangerous: BTreeMap::new(),
                report_mentions: vec![],
                profile_exit: 0,
            },
        };
        assert_eq!(
            workload.profile_options(),
            ["--user=0", "--cap-add=SYS_NICE"]
        );
    }
}
