//! What a profile says each service needs: the minimal `cap_add`, one reason per capability.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::capability::Capability;

/// One capability a service needs and, in one line, why (shown as a YAML comment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeededCapability {
    pub capability: Capability,
    pub reason: String,
}

/// The minimal capability set for one service. Empty means `cap_drop: [ALL]` and no `cap_add`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecommendation {
    pub cap_add: Vec<NeededCapability>,
}

impl ServiceRecommendation {
    pub fn new(cap_add: impl IntoIterator<Item = (Capability, String)>) -> Self {
        Self {
            cap_add: cap_add
                .into_iter()
                .map(|(capability, reason)| NeededCapability { capability, reason })
                .collect(),
        }
    }

    /// The needed capabilities, sorted by Compose name and without duplicates; a duplicate's
    /// first non-empty reason wins.
    pub fn needed(&self) -> BTreeMap<Capability, &str> {
        let mut needed: BTreeMap<Capability, &str> = BTreeMap::new();
        for entry in &self.cap_add {
            let reason = needed.entry(entry.capability).or_insert("");
            if reason.is_empty() {
                *reason = entry.reason.as_str();
            }
        }
        needed
    }

    /// The needed capabilities in the order `compose apply` writes them (by Compose name).
    pub fn sorted(&self) -> Vec<(Capability, &str)> {
        let mut sorted: Vec<_> = self.needed().into_iter().collect();
        sorted.sort_by_key(|(cap, _)| cap.short_name());
        sorted
    }
}

/// Recommendations keyed by Compose service name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Recommendations {
    services: BTreeMap<String, ServiceRecommendation>,
}

impl Recommendations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, service: impl Into<String>, recommendation: ServiceRecommendation) {
        self.services.insert(service.into(), recommendation);
    }

    pub fn get(&self, service: &str) -> Option<&ServiceRecommendation> {
        self.services.get(service)
    }

    pub fn contains(&self, service: &str) -> bool {
        self.services.contains_key(service)
    }

    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

impl FromIterator<(String, ServiceRecommendation)> for Recommendations {
    fn from_iter<I: IntoIterator<Item = (String, ServiceRecommendation)>>(iter: I) -> Self {
        Self {
            services: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_deduplicates_and_keeps_the_first_reason() {
        let recommendation = ServiceRecommendation::new([
            (Capability::NetRaw, String::new()),
            (Capability::Chown, "chown /data".to_owned()),
            (Capability::NetRaw, "ping".to_owned()),
            (Capability::Chown, "later".to_owned()),
        ]);
        let sorted = recommendation.sorted();
        assert_eq!(
            sorted,
            vec![
                (Capability::Chown, "chown /data"),
                (Capability::NetRaw, "ping")
            ]
        );
    }

    #[test]
    fn round_trips_through_json() {
        let mut recommendations = Recommendations::new();
        recommendations.insert(
            "web",
            ServiceRecommendation::new([(Capability::NetBindService, "bind :80".to_owned())]),
        );
        let json = serde_json::to_string(&recommendations).unwrap();
        assert_eq!(
            json,
            r#"{"web":{"cap_add":[{"capability":"CAP_NET_BIND_SERVICE","reason":"bind :80"}]}}"#
        );
        let back: Recommendations = serde_json::from_str(&json).unwrap();
        assert_eq!(back, recommendations);
    }
}
