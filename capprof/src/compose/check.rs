//! `compose check`: does each profiled service grant exactly what its profile needs?

use std::{fmt, path::PathBuf};

use serde::Serialize;

use super::{
    error::ComposeError,
    project::ComposeProject,
    recommendation::{Recommendations, ServiceRecommendation},
    settings::CapSettings,
};
use crate::capability::Capability;

/// A needed capability the service is not granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingCapability {
    pub capability: Capability,
    pub reason: String,
}

/// How one profiled service's capability keys compare with its profile. The lists are
/// computed as if `privileged` were false, so they say what to write once it is removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceCheck {
    pub service: String,
    /// Nothing to fix: drops ALL, adds exactly the needed set, not privileged.
    pub clean: bool,
    /// `privileged: true`: every capability is granted whatever the lists say.
    pub privileged: bool,
    /// `cap_drop` holds `ALL`.
    pub drops_all: bool,
    /// `cap_add` holds `ALL`.
    pub adds_all: bool,
    /// Granted through `cap_add` (or `cap_add: [ALL]`) but never used.
    pub extra: Vec<Capability>,
    /// Docker defaults still granted because `cap_drop` lacks `ALL`, never used.
    pub unused_defaults: Vec<Capability>,
    /// Needed but not granted.
    pub missing: Vec<MissingCapability>,
    /// What the profile needs.
    pub needed: Vec<Capability>,
    /// What Docker grants from these keys (privileged aside).
    pub granted: Vec<Capability>,
}

impl ServiceCheck {
    pub fn compare(
        service: &str,
        settings: &CapSettings,
        recommendation: &ServiceRecommendation,
    ) -> Self {
        let needed = recommendation.needed();
        let granted = settings.granted_without_privileged();
        let (extra, unused_defaults): (Vec<Capability>, Vec<Capability>) = granted
            .iter()
            .copied()
            .filter(|cap| !needed.contains_key(cap))
            .partition(|cap| settings.cap_add.all || settings.cap_add.capabilities.contains(cap));
        let missing: Vec<MissingCapability> = needed
            .iter()
            .filter(|(cap, _)| !granted.contains(cap))
            .map(|(cap, reason)| MissingCapability {
                capability: *cap,
                reason: (*reason).to_owned(),
            })
            .collect();
        let clean = !settings.privileged
            && settings.cap_drop.all
            && !settings.cap_add.all
            && extra.is_empty()
            && missing.is_empty();
        Self {
            service: service.to_owned(),
            clean,
            privileged: settings.privileged,
            drops_all: settings.cap_drop.all,
            adds_all: settings.cap_add.all,
            extra,
            unused_defaults,
            missing,
            needed: needed.keys().copied().collect(),
            granted: granted.into_iter().collect(),
        }
    }

    /// One line per problem, each saying what to change.
    pub fn problems(&self) -> Vec<String> {
        let names = |caps: &mut dyn Iterator<Item = Capability>| {
            caps.map(Capability::short_name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut problems = Vec::new();
        if self.privileged {
            problems
                .push("privileged: true grants every capability (and more): remove it".to_owned());
        }
        if self.adds_all {
            problems.push("cap_add holds ALL: list only the needed capabilities".to_owned());
        }
        if !self.extra.is_empty() {
            problems.push(format!(
                "grants {} but never used {}: remove from cap_add",
                names(&mut self.extra.iter().copied()),
                if self.extra.len() == 1 { "it" } else { "them" }
            ));
        }
        for missing in &self.missing {
            let why = if missing.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", missing.reason)
            };
            problems.push(format!(
                "misses {}{why}, which it needs: add it to cap_add",
                missing.capability.short_name()
            ));
        }
        if !self.drops_all {
            let defaults = if self.unused_defaults.is_empty() {
                String::new()
            } else {
                format!(
                    "; unused Docker defaults stay granted: {}",
                    names(&mut self.unused_defaults.iter().copied())
                )
            };
            problems.push(format!(
                "does not drop ALL: add `cap_drop: [ALL]`{defaults}"
            ));
        }
        problems
    }
}

/// The result of `compose check`, readable (`Display`) and as JSON (`Serialize`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Every profiled service matches: the CI gate passes.
    pub clean: bool,
    pub files: Vec<PathBuf>,
    /// Profiled services, in file order.
    pub services: Vec<ServiceCheck>,
    /// Services in the files without a profile: not checked.
    pub not_profiled: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.clean
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|error| {
            // Only strings, booleans and lists: serialization cannot fail.
            format!("{{\"error\": \"{error}\"}}")
        })
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failing = self.services.iter().filter(|s| !s.clean).count();
        for service in &self.services {
            if service.clean {
                writeln!(f, "ok        {}", service.service)?;
                continue;
            }
            writeln!(f, "MISMATCH  {}", service.service)?;
            for problem in service.problems() {
                writeln!(f, "            - {problem}")?;
            }
        }
        if !self.not_profiled.is_empty() {
            writeln!(
                f,
                "not profiled, not checked: {}",
                self.not_profiled.join(", ")
            )?;
        }
        if failing == 0 {
            write!(
                f,
                "{} profiled service(s) match their profiles",
                self.services.len()
            )
        } else {
            write!(
                f,
                "{failing} of {} profiled service(s) do not match their profiles",
                self.services.len()
            )
        }
    }
}

/// Compares every profiled service's resolved capability keys with its recommendation.
/// A recommendation for a service the files do not define is an error (wrong file?).
pub fn check(
    project: &ComposeProject,
    recommendations: &Recommendations,
) -> Result<CheckReport, ComposeError> {
    if let Some(unknown) = recommendations
        .services()
        .find(|name| !project.has_service(name))
    {
        return Err(project.unknown_service(unknown));
    }
    let mut services = Vec::new();
    let mut not_profiled = Vec::new();
    for name in project.service_names() {
        match recommendations.get(&name) {
            Some(recommendation) => {
                let settings = project.capability_settings(&name)?;
                services.push(ServiceCheck::compare(&name, &settings, recommendation));
            }
            None => not_profiled.push(name),
        }
    }
    Ok(CheckReport {
        clean: services.iter().all(|s| s.clean),
        files: project.paths().into_iter().map(PathBuf::from).collect(),
        services,
        not_profiled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Capability::*;

    fn report(text: &str, recommendations: &[(&str, &[Capability])]) -> CheckReport {
        let project =
            ComposeProject::from_texts([(PathBuf::from("compose.yml"), text.to_owned())]).unwrap();
        let recommendations = recommendations
            .iter()
            .map(|(name, caps)| {
                (
                    (*name).to_owned(),
                    ServiceRecommendation::new(caps.iter().map(|c| (*c, format!("uses {c}")))),
                )
            })
            .collect();
        check(&project, &recommendations).unwrap()
    }

    #[test]
    fn a_matching_file_is_clean() {
        let report = report(
            "services:\n  web:\n    image: x\n    cap_drop: [all]\n    cap_add: [CAP_NET_BIND_SERVICE]\n  db:\n    image: y\n",
            &[("web", &[NetBindService])],
        );
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.not_profiled, ["db"]);
        assert!(report.to_string().contains("ok        web"));
    }

    #[test]
    fn an_extra_capability_fails_with_a_readable_and_a_json_diff() {
        let report = report(
            "services:\n  web:\n    image: x\n    cap_drop: [ALL]\n    cap_add: [NET_BIND_SERVICE, NET_ADMIN]\n",
            &[("web", &[NetBindService])],
        );
        assert!(!report.is_clean());
        assert_eq!(report.services[0].extra, [NetAdmin]);
        let text = report.to_string();
        assert!(text.contains("MISMATCH  web"), "{text}");
        assert!(
            text.contains("grants NET_ADMIN but never used it: remove from cap_add"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["clean"], false);
        assert_eq!(json["services"][0]["extra"][0], "CAP_NET_ADMIN");
        assert_eq!(json["services"][0]["missing"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn missing_capabilities_and_a_missing_drop_all_are_reported() {
        let report = report(
            "services:\n  web:\n    image: x\n    cap_add:\n      - SYS_TIME\n",
            &[("web", &[SysTime, NetAdmin, Chown])],
        );
        let web = &report.services[0];
        assert!(!web.clean && !web.drops_all);
        assert_eq!(web.missing.len(), 1);
        assert_eq!(web.missing[0].capability, NetAdmin);
        assert_eq!(web.missing[0].reason, "uses CAP_NET_ADMIN");
        // CHOWN is a Docker default: granted, so not missing, and needed, so not unused.
        assert_eq!(web.unused_defaults.len(), 13);
        assert!(!web.unused_defaults.contains(&Chown));
        let text = report.to_string();
        assert!(
            text.contains("misses NET_ADMIN (uses CAP_NET_ADMIN)"),
            "{text}"
        );
        assert!(text.contains("does not drop ALL"), "{text}");
    }

    #[test]
    fn privileged_is_flagged_even_when_the_lists_match() {
        let report = report(
            "services:\n  web:\n    image: x\n    privileged: true\n    cap_drop: [ALL]\n    cap_add: [KILL]\n",
            &[("web", &[Kill])],
        );
        let web = &report.services[0];
        assert!(web.privileged && !web.clean);
        assert!(web.extra.is_empty() && web.missing.is_empty());
        assert!(
            report
                .to_string()
                .contains("privileged: true grants every capability")
        );
    }

    #[test]
    fn a_profile_for_an_unknown_service_is_an_error() {
        let project = ComposeProject::from_texts([(
            PathBuf::from("compose.yml"),
            "services:\n  web:\n    image: x\n".to_owned(),
        )])
        .unwrap();
        let recommendations: Recommendations =
            [("api".to_owned(), ServiceRecommendation::default())]
                .into_iter()
                .collect();
        let error = check(&project, &recommendations).unwrap_err().to_string();
        assert!(error.contains("service `api` is not defined"), "{error}");
        assert!(error.contains("services there: web"), "{error}");
    }
}
