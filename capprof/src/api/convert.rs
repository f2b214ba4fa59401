//! The one place where library types become `capprof.v1` messages and back.

use std::collections::BTreeMap;

use capprof_proto::v1 as pb;

use crate::{
    attach::AttachMode,
    capability::Capability,
    classify::CheckClass,
    collector::TracerCounters,
    daemon::LiveCheck,
    profile::{EntryVerdict, Subject, SubjectInfo},
    recommend::{Danger, Evidence, IgnoredCheck, Recommendation, RecommendedCapability},
};

/// A message from the daemon that this client cannot read: a newer daemon, or a bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("the daemon's answer lacks `{0}`")]
    Missing(&'static str),
    #[error("the daemon named a capability this capprof does not know: `{0}`; upgrade capprof")]
    UnknownCapability(String),
    #[error("the daemon sent an unknown or unspecified {0}; upgrade capprof")]
    UnknownEnum(&'static str),
}

pub fn subject_to_proto(subject: &Subject) -> pb::Subject {
    use pb::subject::Kind;
    let kind = match subject {
        Subject::Container { id } => Kind::Container(pb::ContainerSubject { id: id.clone() }),
        Subject::Service { project, service } => Kind::Service(pb::ServiceRef {
            project: project.clone(),
            service: service.clone(),
        }),
        Subject::Image { name } => Kind::Image(pb::ImageSubject { name: name.clone() }),
        Subject::Host => Kind::Host(pb::HostRef {}),
    };
    pb::Subject { kind: Some(kind) }
}

pub fn subject_from_proto(subject: Option<pb::Subject>) -> Result<Subject, ConvertError> {
    use pb::subject::Kind;
    match subject.and_then(|subject| subject.kind) {
        Some(Kind::Container(container)) => Ok(Subject::Container { id: container.id }),
        Some(Kind::Service(service)) => Ok(Subject::Service {
            project: service.project,
            service: service.service,
        }),
        Some(Kind::Image(image)) => Ok(Subject::Image { name: image.name }),
        Some(Kind::Host(_)) => Ok(Subject::Host),
        None => Err(ConvertError::Missing("subject")),
    }
}

fn info_to_proto(info: &SubjectInfo) -> pb::SubjectInfo {
    pb::SubjectInfo {
        names: info.names.clone(),
        images: info.images.clone(),
        compose_project: info.compose_project.clone(),
        compose_service: info.compose_service.clone(),
        containers: info.containers.clone(),
        first_seen_ms: info.first_seen_ms,
        last_seen_ms: info.last_seen_ms,
        exited_at_ms: info.exited_at_ms,
    }
}

fn info_from_proto(info: pb::SubjectInfo) -> SubjectInfo {
    SubjectInfo {
        names: info.names,
        images: info.images,
        compose_project: info.compose_project,
        compose_service: info.compose_service,
        containers: info.containers,
        first_seen_ms: info.first_seen_ms,
        last_seen_ms: info.last_seen_ms,
        exited_at_ms: info.exited_at_ms,
    }
}

pub fn verdict_to_proto(verdict: EntryVerdict) -> pb::Verdict {
    match verdict {
        EntryVerdict::Granted => pb::Verdict::Granted,
        EntryVerdict::Denied => pb::Verdict::Denied,
    }
}

fn verdict_from_proto(value: i32) -> Result<EntryVerdict, ConvertError> {
    match pb::Verdict::try_from(value) {
        Ok(pb::Verdict::Granted) => Ok(EntryVerdict::Granted),
        Ok(pb::Verdict::Denied) => Ok(EntryVerdict::Denied),
        Ok(pb::Verdict::Unspecified) | Err(_) => Err(ConvertError::UnknownEnum("verdict")),
    }
}

fn class_to_proto(class: CheckClass) -> pb::CheckClass {
    match class {
        CheckClass::Required => pb::CheckClass::Required,
        CheckClass::Missing => pb::CheckClass::Missing,
        CheckClass::Advisory => pb::CheckClass::Advisory,
        CheckClass::RuntimeSetup => pb::CheckClass::RuntimeSetup,
        CheckClass::ForeignCred => pb::CheckClass::ForeignCred,
        CheckClass::Superseded => pb::CheckClass::Superseded,
    }
}

fn class_from_proto(value: i32) -> Result<CheckClass, ConvertError> {
    match pb::CheckClass::try_from(value) {
        Ok(pb::CheckClass::Required) => Ok(CheckClass::Required),
        Ok(pb::CheckClass::Missing) => Ok(CheckClass::Missing),
        Ok(pb::CheckClass::Advisory) => Ok(CheckClass::Advisory),
        Ok(pb::CheckClass::RuntimeSetup) => Ok(CheckClass::RuntimeSetup),
        Ok(pb::CheckClass::ForeignCred) => Ok(CheckClass::ForeignCred),
        Ok(pb::CheckClass::Superseded) => Ok(CheckClass::Superseded),
        Ok(pb::CheckClass::Unspecified) | Err(_) => Err(ConvertError::UnknownEnum("check class")),
    }
}

fn capability_from_name(name: &str) -> Result<Capability, ConvertError> {
    name.parse()
        .map_err(|_| ConvertError::UnknownCapability(name.to_owned()))
}

fn capability_names(capabilities: &[Capability]) -> Vec<String> {
    capabilities
        .iter()
        .map(|cap| cap.short_name().to_owned())
        .collect()
}

fn capabilities_from_names(names: &[String]) -> Result<Vec<Capability>, ConvertError> {
    names
        .iter()
        .map(|name| capability_from_name(name))
        .collect()
}

fn evidence_to_proto(evidence: &Evidence) -> pb::Evidence {
    pb::Evidence {
        checked: evidence.checked.clone(),
        verdict: verdict_to_proto(evidence.verdict).into(),
        class: class_to_proto(evidence.class).into(),
        rule: evidence.rule.clone(),
        syscall: evidence.syscall.clone(),
        kernel_path: evidence.kernel_path.clone(),
        count: evidence.count,
        first_seen_ms: evidence.first_seen_ms,
        last_seen_ms: evidence.last_seen_ms,
        comm: evidence.comm.clone(),
        pid: evidence.pid,
        uid: evidence.uid,
        stack: evidence.stack.clone(),
        reason: evidence.reason.clone(),
    }
}

fn evidence_from_proto(evidence: pb::Evidence) -> Result<Evidence, ConvertError> {
    Ok(Evidence {
        verdict: verdict_from_proto(evidence.verdict)?,
        class: class_from_proto(evidence.class)?,
        checked: evidence.checked,
        rule: evidence.rule,
        syscall: evidence.syscall,
        kernel_path: evidence.kernel_path,
        count: evidence.count,
        first_seen_ms: evidence.first_seen_ms,
        last_seen_ms: evidence.last_seen_ms,
        comm: evidence.comm,
        pid: evidence.pid,
        uid: evidence.uid,
        stack: evidence.stack,
        reason: evidence.reason,
    })
}

fn ignored_to_proto(check: &IgnoredCheck) -> pb::IgnoredCheck {
    pb::IgnoredCheck {
        capability: check.capability.clone(),
        verdict: verdict_to_proto(check.verdict).into(),
        syscall: check.syscall.clone(),
        count: check.count,
        comm: check.comm.clone(),
        reason: check.reason.clone(),
    }
}

fn ignored_from_proto(check: pb::IgnoredCheck) -> Result<IgnoredCheck, ConvertError> {
    Ok(IgnoredCheck {
        verdict: verdict_from_proto(check.verdict)?,
        capability: check.capability,
        syscall: check.syscall,
        count: check.count,
        comm: check.comm,
        reason: check.reason,
    })
}

pub fn recommendation_to_proto(recommendation: &Recommendation) -> pb::Recommendation {
    pb::Recommendation {
        subject: Some(subject_to_proto(&recommendation.subject)),
        info: Some(info_to_proto(&recommendation.info)),
        cap_add: recommendation
            .cap_add
            .iter()
            .map(|recommended| pb::RecommendedCapability {
                capability: recommended.capability.short_name().to_owned(),
                reason: recommended.reason.clone(),
                was_denied: recommended.was_denied,
                danger: recommended.danger.as_ref().map(|danger| pb::Danger {
                    why: danger.why.clone(),
                    alternative: danger.alternative.clone(),
                }),
                evidence: recommended.evidence.iter().map(evidence_to_proto).collect(),
            })
            .collect(),
        unneeded_defaults: capability_names(&recommendation.unneeded_defaults),
        denied: capability_names(&recommendation.denied),
        dangerous: capability_names(&recommendation.dangerous),
        ignored: recommendation
            .ignored
            .iter()
            .map(|(class, checks)| pb::IgnoredGroup {
                class: class_to_proto(*class).into(),
                checks: checks.iter().map(ignored_to_proto).collect(),
            })
            .collect(),
        total_checks: recommendation.total_checks,
    }
}

pub fn recommendation_from_proto(
    recommendation: pb::Recommendation,
) -> Result<Recommendation, ConvertError> {
    let mut cap_add = Vec::with_capacity(recommendation.cap_add.len());
    for recommended in recommendation.cap_add {
        cap_add.push(RecommendedCapability {
            capability: capability_from_name(&recommended.capability)?,
            reason: recommended.reason,
            was_denied: recommended.was_denied,
            danger: recommended.danger.map(|danger| Danger {
                why: danger.why,
                alternative: danger.alternative,
            }),
            evidence: recommended
                .evidence
                .into_iter()
                .map(evidence_from_proto)
                .collect::<Result<_, _>>()?,
        });
    }
    let mut ignored = BTreeMap::new();
    for group in recommendation.ignored {
        let checks: Vec<IgnoredCheck> = group
            .checks
            .into_iter()
            .map(ignored_from_proto)
            .collect::<Result<_, _>>()?;
        ignored.insert(class_from_proto(group.class)?, checks);
    }
    Ok(Recommendation {
        subject: subject_from_proto(recommendation.subject)?,
        info: info_from_proto(recommendation.info.unwrap_or_default()),
        cap_add,
        unneeded_defaults: capabilities_from_names(&recommendation.unneeded_defaults)?,
        denied: capabilities_from_names(&recommendation.denied)?,
        dangerous: capabilities_from_names(&recommendation.dangerous)?,
        ignored,
        total_checks: recommendation.total_checks,
    })
}

pub fn attach_mode_to_proto(mode: AttachMode) -> pb::AttachMode {
    match mode {
        AttachMode::Fentry => pb::AttachMode::Fentry,
        AttachMode::Kprobe => pb::AttachMode::Kprobe,
        AttachMode::Tracepoint => pb::AttachMode::Tracepoint,
    }
}

pub fn counters_to_proto(counters: &TracerCounters) -> pb::TracerCounters {
    pb::TracerCounters {
        events_lost: counters.events_lost,
        checks_dropped: counters.checks_dropped,
        call_sites_dropped: counters.call_sites_dropped,
        stack_errors: counters.stack_errors,
        unmatched_returns: counters.unmatched_returns,
    }
}

/// A live check as the stream sends it; `container_name` is empty when unknown.
pub fn live_check_to_proto(check: &LiveCheck, container_name: String) -> pb::CheckEvent {
    pb::CheckEvent {
        subject: Some(subject_to_proto(&check.subject)),
        container_name,
        capability: check.key.capability_name(),
        verdict: verdict_to_proto(check.key.verdict).into(),
        syscall: check.key.syscall(),
        count: check.delta,
        task: check.example.as_ref().map(|example| pb::Task {
            pid: example.pid,
            tgid: example.tgid,
            uid: example.uid,
            gid: example.gid,
            comm: example.comm.clone(),
            seen_at_ms: example.seen_at_ms,
        }),
        flags: check.key.flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::check;
    use crate::{profile::Profile, recommend::recommend};

    #[test]
    fn recommendations_round_trip() {
        let entry = |cap, syscall, stack: &[&str]| {
            check(cap, EntryVerdict::Granted, syscall, stack)
                .by("httpd")
                .count(3)
                .seen(1_000, 2_000)
                .entry()
        };
        let recommendation = recommend(&Profile {
            subject: Subject::Service {
                project: "shop".into(),
                service: "web".into(),
            },
            info: SubjectInfo {
                names: vec!["shop-web-1".into()],
                compose_project: Some("shop".into()),
                ..Default::default()
            },
            entries: vec![
                entry(
                    Capability::NetBindService,
                    49,
                    &["cap_capable", "ns_capable", "__inet_bind+0x1"],
                ),
                entry(
                    Capability::SysAdmin,
                    170,
                    &["cap_capable", "__x64_sys_sethostname+0x7"],
                ),
                entry(
                    Capability::SysAdmin,
                    9,
                    &["cap_capable", "security_vm_enough_memory_mm+0x36"],
                ),
            ],
        });
        assert!(!recommendation.dangerous.is_empty() && !recommendation.ignored.is_empty());
        let back = recommendation_from_proto(recommendation_to_proto(&recommendation)).unwrap();
        assert_eq!(back, recommendation);
    }

    #[test]
    fn unknown_capabilities_and_enums_are_refused() {
        let mut message = pb::Recommendation {
            subject: Some(subject_to_proto(&Subject::Host)),
            cap_add: vec![pb::RecommendedCapability {
                capability: "TIME_TRAVEL".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            recommendation_from_proto(message.clone()),
            Err(ConvertError::UnknownCapability("TIME_TRAVEL".into()))
        );
        message.cap_add.clear();
        message.ignored.push(pb::IgnoredGroup {
            class: 0,
            checks: vec![],
        });
        assert_eq!(
            recommendation_from_proto(message.clone()),
            Err(ConvertError::UnknownEnum("check class"))
        );
        message.subject = None;
        message.ignored.clear();
        assert_eq!(
            recommendation_from_proto(message),
            Err(ConvertError::Missing("subject"))
        );
    }
}
