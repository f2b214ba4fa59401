//! A service's `cap_add`, `cap_drop` and `privileged` as values, how Compose merges them across
//! files and `extends`, and what Docker grants from them.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::capability::Capability;

/// A `cap_add` or `cap_drop` list, names normalized; `ALL` kept apart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CapSet {
    /// The list holds `ALL`.
    pub all: bool,
    pub capabilities: BTreeSet<Capability>,
}

impl CapSet {
    pub fn only_all() -> Self {
        Self {
            all: true,
            capabilities: BTreeSet::new(),
        }
    }

    pub fn of(capabilities: impl IntoIterator<Item = Capability>) -> Self {
        Self {
            all: false,
            capabilities: capabilities.into_iter().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.capabilities.is_empty()
    }

    fn union(mut self, other: &CapSet) -> Self {
        self.all |= other.all;
        self.capabilities.extend(&other.capabilities);
        self
    }
}

/// A service's capability keys as Compose resolves them (all files merged, `extends` applied).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CapSettings {
    pub cap_add: CapSet,
    pub cap_drop: CapSet,
    pub privileged: bool,
}

impl CapSettings {
    /// The capabilities Docker gives the container, as moby's `TweakCapabilities` computes them.
    pub fn granted(&self) -> BTreeSet<Capability> {
        if self.privileged {
            return Capability::ALL.iter().copied().collect();
        }
        self.granted_without_privileged()
    }

    /// What [`Self::granted`] would be without `privileged: true`.
    pub fn granted_without_privileged(&self) -> BTreeSet<Capability> {
        if self.cap_add.all {
            return Capability::ALL
                .iter()
                .copied()
                .filter(|cap| !self.cap_drop.capabilities.contains(cap))
                .collect();
        }
        if self.cap_drop.all {
            return self.cap_add.capabilities.clone();
        }
        Capability::DOCKER_DEFAULTS
            .iter()
            .copied()
            .filter(|cap| !self.cap_drop.capabilities.contains(cap))
            .chain(self.cap_add.capabilities.iter().copied())
            .collect()
    }
}

/// The capability keys one file (or one `extends` layer) sets for a service; `None` = not set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PartialCapSettings {
    pub cap_add: Option<CapSet>,
    pub cap_drop: Option<CapSet>,
    pub privileged: Option<bool>,
}

impl PartialCapSettings {
    /// Compose's merge, for `-f` override files and for `extends` alike: `cap_add` and
    /// `cap_drop` are sequences and are merged (Compose v1 takes the union, Compose v2 appends
    /// and removes duplicates: the same set); `privileged` is a scalar, the overlay wins.
    pub fn merged_with(self, overlay: &PartialCapSettings) -> Self {
        fn union(base: Option<CapSet>, overlay: &Option<CapSet>) -> Option<CapSet> {
            match (base, overlay) {
                (Some(base), Some(overlay)) => Some(base.union(overlay)),
                (base, None) => base,
                (None, Some(overlay)) => Some(overlay.clone()),
            }
        }
        Self {
            cap_add: union(self.cap_add, &overlay.cap_add),
            cap_drop: union(self.cap_drop, &overlay.cap_drop),
            privileged: overlay.privileged.or(self.privileged),
        }
    }

    pub fn resolved(self) -> CapSettings {
        CapSettings {
            cap_add: self.cap_add.unwrap_or_default(),
            cap_drop: self.cap_drop.unwrap_or_default(),
            privileged: self.privileged.unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Capability::*;

    fn settings(add: CapSet, drop: CapSet) -> CapSettings {
        CapSettings {
            cap_add: add,
            cap_drop: drop,
            privileged: false,
        }
    }

    #[test]
    fn nothing_set_grants_dockers_defaults() {
        let granted = CapSettings::default().granted();
        assert_eq!(granted.len(), 14);
        assert!(granted.contains(&NetRaw));
    }

    #[test]
    fn drop_all_keeps_only_what_is_added() {
        let granted = settings(CapSet::of([NetAdmin]), CapSet::only_all()).granted();
        assert_eq!(granted, BTreeSet::from([NetAdmin]));
    }

    #[test]
    fn add_all_grants_everything_but_the_dropped() {
        let add_all = CapSet {
            all: true,
            capabilities: BTreeSet::new(),
        };
        let granted = settings(add_all, CapSet::of([SysAdmin])).granted();
        assert_eq!(granted.len(), Capability::ALL.len() - 1);
        assert!(!granted.contains(&SysAdmin));
    }

    #[test]
    fn specific_drops_remove_from_the_defaults() {
        let granted = settings(CapSet::of([SysTime]), CapSet::of([NetRaw])).granted();
        assert_eq!(granted.len(), 14);
        assert!(granted.contains(&SysTime) && !granted.contains(&NetRaw));
    }

    #[test]
    fn privileged_grants_everything_whatever_the_lists_say() {
        let mut privileged = settings(CapSet::default(), CapSet::only_all());
        privileged.privileged = true;
        assert_eq!(privileged.granted().len(), Capability::ALL.len());
        assert!(privileged.granted_without_privileged().is_empty());
    }

    #[test]
    fn merging_unions_lists_and_overrides_privileged() {
        let base = PartialCapSettings {
            cap_add: Some(CapSet::of([NetAdmin])),
            cap_drop: None,
            privileged: Some(true),
        };
        let overlay = PartialCapSettings {
            cap_add: Some(CapSet::of([Kill])),
            cap_drop: Some(CapSet::only_all()),
            privileged: Some(false),
        };
        let merged = base.merged_with(&overlay).resolved();
        assert_eq!(merged.cap_add, CapSet::of([NetAdmin, Kill]));
        assert_eq!(merged.cap_drop, CapSet::only_all());
        assert!(!merged.privileged);
        let keeps = PartialCapSettings {
            privileged: Some(true),
            ..Default::default()
        }
        .merged_with(&PartialCapSettings::default());
        assert_eq!(keeps.privileged, Some(true));
    }
}
