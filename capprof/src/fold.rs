//! Folds the kernel's cumulative counts into profiles.
//!
//! Each poll, every kernel key whose count grew (or that gained a call site) is attributed to its
//! owner (a container, or the host) and the difference since the last fold is added to the
//! owner's profiles: the container's own, its Compose service's and its image's. A key whose
//! cgroup cannot be attributed yet is left alone and folded later, with nothing lost, because the
//! kernel keeps counting and the difference is computed against what was already folded.

use std::collections::{HashMap, HashSet};

use capprof_common::CheckKey;

use crate::{
    checks::{CheckRecord, CheckTable, Sighting},
    profile::{EntryCallSite, EntryKey, Example, Subject},
    store::{Batch, ContainerRecord, EntryDelta},
};

/// Who owns a cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Container(ContainerRecord),
    /// Not a container's cgroup: the host's processes.
    Host,
    /// Not known yet (the container may not be resolved, or the engine is unreachable): ask again
    /// next poll.
    Pending,
}

/// Answers "whose cgroup is this?". `cgroup_name` is the cgroup directory's name as the kernel
/// reported it with a check (a container id for Docker's cgroups), which outlives the cgroup.
pub trait Attributor {
    fn owner_of(&mut self, cgroup_id: u64, cgroup_name: Option<&str>) -> Owner;
}

/// Converts the kernel's boot-time clock to wall-clock milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub wall_now_ms: i64,
    pub boot_now_ns: u64,
}

impl Clock {
    /// Reads both clocks now.
    pub fn now() -> Self {
        let wall_now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as i64)
            .unwrap_or_default();
        let mut boot = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime fills a valid timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut boot) };
        Self {
            wall_now_ms,
            boot_now_ns: boot.tv_sec as u64 * 1_000_000_000 + boot.tv_nsec as u64,
        }
    }

    /// The wall-clock time of a `CLOCK_BOOTTIME` instant.
    pub fn wall_ms(&self, boot_ns: u64) -> i64 {
        let ago_ms = (self.boot_now_ns.saturating_sub(boot_ns) / 1_000_000) as i64;
        self.wall_now_ms - ago_ms
    }
}

/// What one poll folded: the batch to store, and what to remember once it is stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fold {
    pub batch: Batch,
    folded_sites: Vec<(CheckKey, Vec<String>)>,
}

/// Remembers what was folded already.
#[derive(Debug, Default)]
pub struct Folder {
    /// Per kernel key, the cumulative count already in profiles.
    attributed: HashMap<CheckKey, u64>,
    /// Call sites already in profiles, per kernel key.
    folded_sites: HashSet<(CheckKey, Vec<String>)>,
    /// Call sites already recorded as reported by the kernel.
    recorded_sites: HashSet<(CheckKey, Vec<String>)>,
    /// cgroups whose names are stored.
    recorded_names: HashSet<u64>,
    /// Call sites a previous daemon recorded but could not attribute: the kernel will not report
    /// them again, so they are folded from here.
    unfolded_sites: HashMap<CheckKey, Vec<EntryCallSite>>,
}

impl Folder {
    /// Starts from what the store says was folded before (after a daemon restart on a resumed
    /// tracer); pass empty maps after a fresh load.
    pub fn resume(
        attributed: HashMap<CheckKey, u64>,
        kernel_sites: &[(CheckKey, EntryCallSite)],
    ) -> Self {
        let mut folder = Self {
            attributed,
            ..Self::default()
        };
        for (key, site) in kernel_sites {
            folder.recorded_sites.insert((*key, site.stack.clone()));
            // Sites of keys already attributed were folded with them.
            if folder.attributed.contains_key(key) {
                folder.folded_sites.insert((*key, site.stack.clone()));
            } else {
                folder
                    .unfolded_sites
                    .entry(*key)
                    .or_default()
                    .push(site.clone());
            }
        }
        folder
    }

    /// Remembers a fold as stored.
    pub fn commit(&mut self, fold: &Fold) {
        self.recorded_names
            .extend(fold.batch.cgroup_names.iter().map(|(id, _)| *id));
        for (key, site) in &fold.batch.kernel_call_sites {
            self.recorded_sites.insert((*key, site.stack.clone()));
        }
        for (key, count) in &fold.batch.attributed {
            self.unfolded_sites.remove(key);
            self.attributed.insert(*key, *count);
        }
        self.folded_sites.extend(fold.folded_sites.iter().cloned());
    }

    /// cgroups in `table` whose every key is folded: candidates for forgetting once removed.
    pub fn fully_folded_cgroups(&self, table: &CheckTable) -> HashSet<u64> {
        let mut done: HashSet<u64> = table.records().map(|record| record.key.cgroup_id).collect();
        for record in table.records() {
            if self.attributed.get(&record.key) != Some(&record.count) {
                done.remove(&record.key.cgroup_id);
            }
        }
        done
    }

    /// Drops the bookkeeping of forgotten cgroups.
    pub fn forget_cgroups(&mut self, cgroups: &HashSet<u64>) {
        self.attributed
            .retain(|key, _| !cgroups.contains(&key.cgroup_id));
        self.folded_sites
            .retain(|(key, _)| !cgroups.contains(&key.cgroup_id));
        self.recorded_sites
            .retain(|(key, _)| !cgroups.contains(&key.cgroup_id));
        self.recorded_names.retain(|id| !cgroups.contains(id));
        self.unfolded_sites
            .retain(|key, _| !cgroups.contains(&key.cgroup_id));
    }

    /// How many kernel keys have been attributed at least once.
    pub fn attributed_keys(&self) -> usize {
        self.attributed.len()
    }

    /// What one poll adds: deltas for every key that changed and could be attributed. Nothing is
    /// remembered until [`Folder::commit`] confirms the batch was stored, so a failed write is
    /// retried whole by the next poll.
    pub fn fold(&self, table: &CheckTable, owners: &mut dyn Attributor, clock: Clock) -> Fold {
        let mut batch = Batch::default();
        let mut folded_sites = Vec::new();
        let mut owners_seen: HashMap<u64, Owner> = HashMap::new();
        for record in table.records() {
            let key = record.key;
            if !self.recorded_names.contains(&key.cgroup_id)
                && let Some(name) = table.cgroup_name(key.cgroup_id)
                && !batch
                    .cgroup_names
                    .iter()
                    .any(|(id, _)| *id == key.cgroup_id)
            {
                batch.cgroup_names.push((key.cgroup_id, name.to_owned()));
            }
            let mut sites = call_sites(record, clock);
            sites.extend(self.unfolded_sites.get(&key).cloned().unwrap_or_default());
            for site in &sites {
                if !self.recorded_sites.contains(&(key, site.stack.clone())) {
                    batch.kernel_call_sites.push((key, site.clone()));
                }
            }
            let already = self.attributed.get(&key).copied().unwrap_or(0);
            let new_sites: Vec<EntryCallSite> = sites
                .into_iter()
                .filter(|site| !self.folded_sites.contains(&(key, site.stack.clone())))
                .collect();
            if record.count <= already && new_sites.is_empty() {
                continue;
            }
            let owner = owners_seen
                .entry(key.cgroup_id)
                .or_insert_with(|| owners.owner_of(key.cgroup_id, table.cgroup_name(key.cgroup_id)))
                .clone();
            let subjects = match &owner {
                Owner::Pending => continue,
                Owner::Host => {
                    batch.cgroups.push((key.cgroup_id, None, clock.wall_now_ms));
                    vec![Subject::Host]
                }
                Owner::Container(container) => {
                    let subjects = container_subjects(container);
                    for subject in &subjects {
                        batch
                            .memberships
                            .push((subject.clone(), container.id.clone()));
                    }
                    batch.cgroups.push((
                        key.cgroup_id,
                        Some(container.id.clone()),
                        clock.wall_now_ms,
                    ));
                    batch.containers.push(ContainerRecord {
                        last_seen_ms: clock.wall_now_ms,
                        ..container.clone()
                    });
                    subjects
                }
            };
            let delta = record.count.saturating_sub(already);
            let seen_at_ms = new_sites
                .iter()
                .map(|site| site.example.seen_at_ms)
                .min()
                .unwrap_or(clock.wall_now_ms);
            let entry_key = entry_key(record);
            for subject in subjects {
                batch.entries.push(EntryDelta {
                    subject,
                    key: entry_key,
                    delta,
                    seen_at_ms,
                    call_sites: new_sites.clone(),
                });
            }
            folded_sites.extend(new_sites.iter().map(|site| (key, site.stack.clone())));
            batch.attributed.push((key, record.count));
        }
        batch.memberships.sort();
        batch.memberships.dedup();
        batch.cgroups.sort();
        batch.cgroups.dedup_by_key(|(cgroup, _, _)| *cgroup);
        batch.containers.sort_by(|a, b| a.id.cmp(&b.id));
        batch.containers.dedup_by(|a, b| a.id == b.id);
        Fold {
            batch,
            folded_sites,
        }
    }
}

/// A kernel record as a profile entry (all of its count, every call site), for classifying checks
/// straight from a tracing session.
pub fn profile_entry(record: &CheckRecord, clock: Clock) -> crate::profile::ProfileEntry {
    let sites = call_sites(record, clock);
    let first_seen_ms = sites
        .iter()
        .map(|site| site.example.seen_at_ms)
        .min()
        .unwrap_or(clock.wall_now_ms);
    crate::profile::ProfileEntry {
        key: entry_key(record),
        count: record.count,
        first_seen_ms,
        last_seen_ms: clock.wall_now_ms,
        call_sites: sites,
    }
}

fn entry_key(record: &CheckRecord) -> EntryKey {
    EntryKey {
        cap: record.key.cap,
        verdict: record.verdict().into(),
        syscall_nr: record.syscall_nr(),
        flags: record.key.flags,
    }
}

/// The profiles a container's checks go to: its own, its Compose service's, its image's.
pub fn container_subjects(container: &ContainerRecord) -> Vec<Subject> {
    let mut subjects = vec![Subject::Container {
        id: container.id.clone(),
    }];
    if let (Some(project), Some(service)) = (&container.compose_project, &container.compose_service)
    {
        subjects.push(Subject::Service {
            project: project.clone(),
            service: service.clone(),
        });
    }
    if !container.image.is_empty() {
        subjects.push(Subject::Image {
            name: container.image.clone(),
        });
    }
    subjects
}

fn call_sites(record: &CheckRecord, clock: Clock) -> Vec<EntryCallSite> {
    record
        .call_sites
        .iter()
        .map(|site| EntryCallSite {
            stack: site.stack.to_vec(),
            example: example(&site.sighting, clock),
        })
        .collect()
}

fn example(sighting: &Sighting, clock: Clock) -> Example {
    Example {
        pid: sighting.pid,
        tgid: sighting.tgid,
        uid: sighting.uid,
        gid: sighting.gid,
        comm: sighting.comm.clone(),
        seen_at_ms: clock.wall_ms(sighting.boot_time_ns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::CallSite;
    use crate::test_support::{call_site, example};
    use capprof_common::Verdict;

    struct FakeOwners(HashMap<u64, Owner>);

    impl Attributor for FakeOwners {
        fn owner_of(&mut self, cgroup_id: u64, _cgroup_name: Option<&str>) -> Owner {
            self.0.get(&cgroup_id).cloned().unwrap_or(Owner::Pending)
        }
    }

    fn web(id: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            name: "shop-web-1".into(),
            image: "busybox".into(),
            compose_project: Some("shop".into()),
            compose_service: Some("web".into()),
            first_seen_ms: 0,
            last_seen_ms: 0,
            exited_at_ms: None,
        }
    }

    fn record(cgroup_id: u64, count: u64, stacks: &[&str]) -> CheckRecord {
        CheckRecord {
            key: CheckKey {
                cgroup_id,
                cap: 0,
                verdict: Verdict::Granted as u32,
                syscall_nr: 260,
                flags: 0,
            },
            count,
            call_sites: stacks
                .iter()
                .map(|frame| CallSite {
                    stack: vec![(*frame).to_owned()].into(),
                    sighting: Sighting {
                        pid: 1,
                        tgid: 1,
                        uid: 0,
                        gid: 0,
                        comm: "chown".into(),
                        boot_time_ns: 2_000_000_000,
                    },
                })
                .collect(),
        }
    }

    fn table(records: Vec<CheckRecord>) -> CheckTable {
        let mut table = CheckTable::default();
        for record in records {
            table.insert_for_test(record);
        }
        table
    }

    const CLOCK: Clock = Clock {
        wall_now_ms: 1_000_000,
        boot_now_ns: 3_000_000_000,
    };

    fn fold_and_commit(folder: &mut Folder, table: &CheckTable, owners: &mut FakeOwners) -> Batch {
        let fold = folder.fold(table, owners, CLOCK);
        folder.commit(&fold);
        fold.batch
    }

    #[test]
    fn only_fully_folded_cgroups_can_be_forgotten() {
        let mut folder = Folder::default();
        let mut owners = FakeOwners(HashMap::from([(7, Owner::Host)]));
        let checks = table(vec![record(7, 5, &["a"]), record(9, 2, &["b"])]);
        fold_and_commit(&mut folder, &checks, &mut owners);
        assert_eq!(
            folder.fully_folded_cgroups(&checks),
            HashSet::from([7]),
            "9 is still pending"
        );
        let grown = table(vec![record(7, 6, &["a"])]);
        assert!(
            folder.fully_folded_cgroups(&grown).is_empty(),
            "7 has an unfolded check"
        );
        folder.forget_cgroups(&HashSet::from([7]));
        assert_eq!(folder.attributed_keys(), 0);
    }

    #[test]
    fn an_uncommitted_fold_is_repeated_whole() {
        let mut folder = Folder::default();
        let mut owners = FakeOwners(HashMap::from([(7, Owner::Host)]));
        let checks = table(vec![record(7, 5, &["chown_common"])]);
        let lost = folder.fold(&checks, &mut owners, CLOCK);
        let retried = folder.fold(&checks, &mut owners, CLOCK);
        assert_eq!(
            lost, retried,
            "the store write failed: nothing was remembered"
        );
        folder.commit(&retried);
        assert!(folder.fold(&checks, &mut owners, CLOCK).batch.is_empty());
    }

    #[test]
    fn deltas_go_to_container_service_and_image() {
        let mut folder = Folder::default();
        let mut owners = FakeOwners(HashMap::from([(7, Owner::Container(web("c1")))]));
        let batch = fold_and_commit(
            &mut folder,
            &table(vec![record(7, 5, &["chown_common"])]),
            &mut owners,
        );
        let subjects: Vec<&Subject> = batch.entries.iter().map(|entry| &entry.subject).collect();
        assert_eq!(
            subjects,
            [
                &Subject::Container { id: "c1".into() },
                &Subject::Service {
                    project: "shop".into(),
                    service: "web".into()
                },
                &Subject::Image {
                    name: "busybox".into()
                },
            ]
        );
        assert!(
            batch
                .entries
                .iter()
                .all(|entry| entry.delta == 5 && entry.call_sites.len() == 1)
        );
        assert_eq!(
            batch.entries[0].seen_at_ms, 999_000,
            "boot time converted to wall time"
        );
        assert_eq!(batch.attributed, vec![(record(7, 0, &[]).key, 5)]);

        let batch = fold_and_commit(
            &mut folder,
            &table(vec![record(7, 8, &["chown_common"])]),
            &mut owners,
        );
        assert!(
            batch
                .entries
                .iter()
                .all(|entry| entry.delta == 3 && entry.call_sites.is_empty())
        );
        let unchanged = fold_and_commit(
            &mut folder,
            &table(vec![record(7, 8, &["chown_common"])]),
            &mut owners,
        );
        assert!(unchanged.is_empty(), "{unchanged:?}");
    }

    #[test]
    fn pending_cgroups_are_folded_once_known_with_nothing_lost() {
        let mut folder = Folder::default();
        let mut owners = FakeOwners(HashMap::new());
        let batch = fold_and_commit(&mut folder, &table(vec![record(9, 4, &["a"])]), &mut owners);
        assert!(batch.entries.is_empty() && batch.attributed.is_empty());
        assert_eq!(
            batch.kernel_call_sites.len(),
            1,
            "the kernel's report is kept even while pending"
        );
        owners.0.insert(9, Owner::Host);
        let batch = fold_and_commit(&mut folder, &table(vec![record(9, 6, &["a"])]), &mut owners);
        assert_eq!(batch.entries.len(), 1);
        assert_eq!(batch.entries[0].subject, Subject::Host);
        assert_eq!(batch.entries[0].delta, 6);
        assert_eq!(batch.entries[0].call_sites.len(), 1);
        assert!(batch.kernel_call_sites.is_empty());
    }

    #[test]
    fn a_resumed_folder_only_adds_the_difference() {
        let key = record(7, 0, &[]).key;
        let stored_site = call_site(&["chown_common"], example("chown", 1, 5));
        let mut folder = Folder::resume(HashMap::from([(key, 10)]), &[(key, stored_site)]);
        let mut owners = FakeOwners(HashMap::from([(7, Owner::Container(web("c1")))]));
        let batch = fold_and_commit(
            &mut folder,
            &table(vec![record(7, 15, &["chown_common"])]),
            &mut owners,
        );
        assert!(
            batch
                .entries
                .iter()
                .all(|entry| entry.delta == 5 && entry.call_sites.is_empty())
        );
        assert!(batch.kernel_call_sites.is_empty());
    }

    #[test]
    fn sites_recorded_before_a_restart_but_never_attributed_are_folded_later() {
        let key = record(9, 0, &[]).key;
        let stored_site = call_site(&["inet_bind"], example("httpd", 1, 5));
        let mut folder = Folder::resume(HashMap::new(), &[(key, stored_site.clone())]);
        let mut owners = FakeOwners(HashMap::from([(9, Owner::Host)]));
        // The resumed tracer's table has the count but no call site: the kernel reported it before.
        let batch = fold_and_commit(&mut folder, &table(vec![record(9, 3, &[])]), &mut owners);
        assert_eq!(batch.entries.len(), 1);
        assert_eq!(batch.entries[0].delta, 3);
        assert_eq!(batch.entries[0].call_sites, vec![stored_site]);
        assert!(batch.kernel_call_sites.is_empty(), "already recorded");
    }
}
