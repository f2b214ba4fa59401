//! Profiles: what a container, a Compose service, an image or the host was seen doing, check by
//! check, with the evidence behind each entry.

use std::fmt;

use capprof_common::{Verdict, check_flags};
use serde::{Deserialize, Serialize};

use crate::{capability::Capability, checks::syscall_name};

/// Whose profile it is. Each check is folded into its container's profile and into the merged
/// profiles of its Compose service and its image; checks from no container go to the host.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Subject {
    Container { id: String },
    Service { project: String, service: String },
    Image { name: String },
    Host,
}

impl Subject {
    /// The stable text key used in storage: `container:<id>`, `service:<project>/<service>`,
    /// `image:<name>`, `host`.
    pub fn storage_key(&self) -> String {
        match self {
            Subject::Container { id } => format!("container:{id}"),
            Subject::Service { project, service } => format!("service:{project}/{service}"),
            Subject::Image { name } => format!("image:{name}"),
            Subject::Host => "host".to_owned(),
        }
    }

    /// The inverse of [`Subject::storage_key`].
    pub fn from_storage_key(key: &str) -> Option<Self> {
        if key == "host" {
            return Some(Subject::Host);
        }
        let (kind, rest) = key.split_once(':')?;
        match kind {
            "container" => Some(Subject::Container {
                id: rest.to_owned(),
            }),
            "service" => {
                let (project, service) = rest.split_once('/')?;
                Some(Subject::Service {
                    project: project.to_owned(),
                    service: service.to_owned(),
                })
            }
            "image" => Some(Subject::Image {
                name: rest.to_owned(),
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Container { id } => write!(f, "container {}", &id[..id.len().min(12)]),
            Subject::Service { project, service } => write!(f, "service {project}/{service}"),
            Subject::Image { name } => write!(f, "image {name}"),
            Subject::Host => f.write_str("the host (no container)"),
        }
    }
}

/// What identifies an entry within a profile: the kernel's aggregation key without the cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryKey {
    pub cap: u32,
    pub verdict: EntryVerdict,
    /// `None` outside a system call.
    pub syscall_nr: Option<u32>,
    /// [`check_flags`] bits.
    pub flags: u32,
}

/// [`Verdict`], serializable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryVerdict {
    Granted,
    Denied,
}

impl From<Verdict> for EntryVerdict {
    fn from(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Granted => EntryVerdict::Granted,
            Verdict::Denied => EntryVerdict::Denied,
        }
    }
}

impl EntryKey {
    pub fn capability(&self) -> Option<Capability> {
        Capability::from_number(self.cap)
    }

    pub fn capability_name(&self) -> String {
        self.capability()
            .map(|cap| cap.kernel_name().to_owned())
            .unwrap_or_else(|| format!("CAP_{}", self.cap))
    }

    pub fn syscall(&self) -> String {
        syscall_name(self.syscall_nr)
    }

    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    /// Whether the attach path observed `opts` for this entry.
    pub fn opts_known(&self) -> bool {
        self.has(check_flags::OPTS_KNOWN)
    }
}

/// Who made a check first on one call path, with wall-clock time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    /// Milliseconds since the Unix epoch.
    pub seen_at_ms: i64,
}

/// One kernel call path of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryCallSite {
    /// Kernel functions, innermost first.
    pub stack: Vec<String>,
    pub example: Example,
}

/// Everything a profile knows about one (cap, verdict, syscall, flags).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileEntry {
    pub key: EntryKey,
    pub count: u64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub call_sites: Vec<EntryCallSite>,
}

impl ProfileEntry {
    /// The earliest example, if any event was received.
    pub fn first_example(&self) -> Option<&Example> {
        self.call_sites
            .iter()
            .map(|site| &site.example)
            .min_by_key(|example| example.seen_at_ms)
    }
}

/// Descriptive facts about a subject.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectInfo {
    /// Container names (without the leading `/`), most recent last.
    pub names: Vec<String>,
    pub images: Vec<String>,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    /// Container ids that contributed.
    pub containers: Vec<String>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// When the (single) container exited, for container subjects.
    pub exited_at_ms: Option<i64>,
}

/// A subject's profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub subject: Subject,
    pub info: SubjectInfo,
    pub entries: Vec<ProfileEntry>,
}

impl Profile {
    /// The total number of checks.
    pub fn total_checks(&self) -> u64 {
        self.entries.iter().map(|entry| entry.count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_keys_round_trip() {
        for subject in [
            Subject::Container {
                id: "abc123".into(),
            },
            Subject::Service {
                project: "shop".into(),
                service: "web".into(),
            },
            Subject::Image {
                name: "registry.local/web:1.2".into(),
            },
            Subject::Host,
        ] {
            assert_eq!(
                Subject::from_storage_key(&subject.storage_key()),
                Some(subject.clone()),
                "{subject}"
            );
        }
        assert_eq!(Subject::from_storage_key("nonsense"), None);
        assert_eq!(Subject::from_storage_key("service:no-slash"), None);
    }

    #[test]
    fn entry_key_names() {
        let key = EntryKey {
            cap: 10,
            verdict: EntryVerdict::Granted,
            syscall_nr: Some(49),
            flags: 0,
        };
        assert_eq!(key.capability_name(), "CAP_NET_BIND_SERVICE");
        assert_eq!(key.syscall(), "bind");
        assert!(!key.opts_known());
    }
}
