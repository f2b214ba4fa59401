//! Reads what the eBPF program gathered: aggregate counts, first-sighting events (each with its
//! kernel stack) and the program's own counters.
//!
//! A [`Collection`] is the seam between the kernel and the rest of capprof: the
//! [`KernelCollector`] reads one from the BPF maps, and unit tests build them by hand.

use std::collections::{HashMap, HashSet};

use aya::maps::{MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf};
use capprof_common::{
    CALL_SITES_MAP, CHECK_COUNTS_MAP, COUNTERS_MAP, CallSiteKey, CheckEvent, CheckKey, Counter,
    EVENTS_MAP, HOT_SLOT_COUNT, HOT_SLOTS_MAP, HotSlot,
};
use serde::Serialize;

use crate::loader::Tracer;

/// The program's own counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TracerCounters {
    /// First-sighting events that did not fit in the ring buffer (retried later; counts are exact).
    pub events_lost: u64,
    /// Checks not counted because the aggregate map was full.
    pub checks_dropped: u64,
    /// Call sites not recorded because the call-site map was full.
    pub call_sites_dropped: u64,
    /// Kernel stacks that could not be taken.
    pub stack_errors: u64,
    /// kretprobe returns without a matching entry (kprobe mode only).
    pub unmatched_returns: u64,
}

impl TracerCounters {
    fn set(&mut self, counter: Counter, value: u64) {
        let slot = match counter {
            Counter::EventsLost => &mut self.events_lost,
            Counter::ChecksDropped => &mut self.checks_dropped,
            Counter::CallSitesDropped => &mut self.call_sites_dropped,
            Counter::StackErrors => &mut self.stack_errors,
            Counter::UnmatchedReturns => &mut self.unmatched_returns,
        };
        *slot = value;
    }
}

/// Everything read in one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collection {
    /// The cumulative count of every key, summed over CPUs.
    pub counts: Vec<(CheckKey, u64)>,
    /// Events sent since the previous pass, in ring-buffer order.
    pub events: Vec<CheckEvent>,
    /// The program's counters (cumulative).
    pub counters: TracerCounters,
}

/// Why reading the maps failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("the loaded program has no `{0}` map; the eBPF object does not match this binary")]
    MissingMap(&'static str),
    #[error("reading the `{map}` map failed: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// Reads the maps of a loaded [`Tracer`].
pub struct KernelCollector {
    counts: PerCpuHashMap<MapData, CheckKey, u64>,
    hot_slots: PerCpuArray<MapData, HotSlot>,
    call_sites: aya::maps::HashMap<MapData, CallSiteKey, u32>,
    /// cgroups whose checks were all folded after the cgroup was removed: their kernel entries
    /// are deleted, and the hot slots they still own (which user space cannot safely clear) are
    /// ignored.
    forgotten: HashSet<u64>,
    events: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for KernelCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCollector").finish_non_exhaustive()
    }
}

impl KernelCollector {
    /// Takes the maps out of a freshly loaded tracer. Call once per tracer.
    pub fn new(tracer: &mut Tracer) -> Result<Self, CollectError> {
        let mut take =
            |name: &'static str| tracer.take_map(name).ok_or(CollectError::MissingMap(name));
        let map_error = |map: &'static str| move |source| CollectError::Map { map, source };
        let counts = take(CHECK_COUNTS_MAP)?;
        let hot_slots = take(HOT_SLOTS_MAP)?;
        let events = take(EVENTS_MAP)?;
        let counters = take(COUNTERS_MAP)?;
        let call_sites = take(CALL_SITES_MAP)?;
        Ok(Self {
            counts: PerCpuHashMap::try_from(counts).map_err(map_error(CHECK_COUNTS_MAP))?,
            hot_slots: PerCpuArray::try_from(hot_slots).map_err(map_error(HOT_SLOTS_MAP))?,
            events: RingBuf::try_from(events).map_err(map_error(EVENTS_MAP))?,
            counters: PerCpuArray::try_from(counters).map_err(map_error(COUNTERS_MAP))?,
            call_sites: aya::maps::HashMap::try_from(call_sites)
                .map_err(map_error(CALL_SITES_MAP))?,
            forgotten: HashSet::new(),
        })
    }

    /// Frees the kernel's entries of cgroups that are gone and fully folded, so that the maps
    /// never fill up on a long-running host. Checks cannot come from a removed cgroup again.
    pub fn forget_cgroups(&mut self, cgroups: &HashSet<u64>) -> Result<(), CollectError> {
        let map_error = |map: &'static str| move |source| CollectError::Map { map, source };
        let doomed: Vec<CheckKey> = self
            .counts
            .keys()
            .filter_map(Result::ok)
            .filter(|key| cgroups.contains(&key.cgroup_id))
            .collect();
        for key in &doomed {
            match self.counts.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(error) => return Err(map_error(CHECK_COUNTS_MAP)(error)),
            }
        }
        let doomed_sites: Vec<CallSiteKey> = self
            .call_sites
            .keys()
            .filter_map(Result::ok)
            .filter(|site| cgroups.contains(&site.check.cgroup_id))
            .collect();
        for site in &doomed_sites {
            match self.call_sites.remove(site) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(error) => return Err(map_error(CALL_SITES_MAP)(error)),
            }
        }
        self.forgotten.extend(cgroups);
        Ok(())
    }

    /// Reads the current counts and the events that arrived since the last call.
    pub fn collect(&mut self) -> Result<Collection, CollectError> {
        // Drain events before reading counts: every event's key is then already in the counts.
        let mut events = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() >= std::mem::size_of::<CheckEvent>() {
                // SAFETY: the program writes whole `CheckEvent`s; `read_unaligned` copes with any
                // alignment of the ring-buffer slot.
                events
                    .push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<CheckEvent>()) });
            }
        }

        let mut totals: HashMap<CheckKey, u64> = HashMap::new();
        // A key is counted in its hot slot or in the hash map on each CPU, never both.
        for index in 0..HOT_SLOT_COUNT {
            let per_cpu = self
                .hot_slots
                .get(&index, 0)
                .map_err(|source| CollectError::Map {
                    map: HOT_SLOTS_MAP,
                    source,
                })?;
            for slot in per_cpu
                .iter()
                .filter(|slot| slot.count > 0 && !self.forgotten.contains(&slot.key.cgroup_id))
            {
                *totals.entry(slot.key).or_default() += slot.count;
            }
        }
        for entry in self.counts.iter() {
            let (key, per_cpu) = entry.map_err(|source| CollectError::Map {
                map: CHECK_COUNTS_MAP,
                source,
            })?;
            *totals.entry(key).or_default() += per_cpu.iter().sum::<u64>();
        }
        let mut counts: Vec<(CheckKey, u64)> = totals.into_iter().collect();
        counts.sort_unstable();

        let mut counters = TracerCounters::default();
        for counter in Counter::ALL {
            let per_cpu =
                self.counters
                    .get(&(counter as u32), 0)
                    .map_err(|source| CollectError::Map {
                        map: COUNTERS_MAP,
                        source,
                    })?;
            counters.set(counter, per_cpu.iter().sum());
        }
        Ok(Collection {
            counts,
            events,
            counters,
        })
    }
}
