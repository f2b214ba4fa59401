//! The tracer in the real kernel: exact caps, verdicts, counts, cgroups and stacks.
//!
//! Needs root, kernel BTF and at least one attach path. `CAPPROF_TEST_ATTACH` (auto, fentry,
//! kprobe, tracepoint) picks the path, so the same tests run for every mode (see `xtask vm-test`).

use std::collections::BTreeMap;

use capprof::{
    attach::{AttachMode, AttachRequest},
    baseline::EmptyProgram,
    checks::{CheckRecord, CheckTable, Opts},
    loader::{LoadError, Tracer, TracerOptions},
    trace::{TraceError, TraceSession},
};
use capprof_common::Verdict;
use capprof_tests::{
    cgroups::{self, TestCgroup},
    ci,
    trigger::Trigger,
};

/// The attach path under test.
fn requested_attach() -> AttachRequest {
    match std::env::var("CAPPROF_TEST_ATTACH").as_deref() {
        Err(_) | Ok("") | Ok("auto") => AttachRequest::Auto,
        Ok("fentry") => AttachRequest::Fentry,
        Ok("kprobe") => AttachRequest::Kprobe,
        Ok("tracepoint") => AttachRequest::Tracepoint,
        Ok(other) => {
            panic!("CAPPROF_TEST_ATTACH={other}: expected auto, fentry, kprobe or tracepoint")
        }
    }
}

/// A tracing session for one test.
struct Session {
    trace: TraceSession,
}

impl Session {
    /// Starts tracing, or returns `None` after [`ci::skip_or_fail`] when this machine cannot.
    fn start(options: TracerOptions) -> Option<Self> {
        if !ci::require_root() {
            return None;
        }
        let options = TracerOptions {
            attach: requested_attach(),
            ..options
        };
        match TraceSession::start(&options) {
            Ok(trace) => Some(Self { trace }),
            Err(error @ TraceError::Load(LoadError::Btf(_) | LoadError::NoAttachPath { .. })) => {
                ci::skip_or_fail(format!("the kernel cannot run the tracer: {error}"));
                None
            }
            Err(error) => panic!("starting the tracer failed: {error}"),
        }
    }

    /// Like [`Session::start`], counting only the checks made in `cgroup` (the in-kernel filter).
    fn watching(cgroup: &TestCgroup) -> Option<Self> {
        Self::start(TracerOptions {
            cgroup_id: Some(cgroup.id()),
            ..Default::default()
        })
    }

    fn collect(&mut self) {
        self.trace.poll().expect("poll the tracer");
    }

    fn table(&self) -> &CheckTable {
        self.trace.table()
    }

    /// The records of one cgroup, by (capability, verdict, syscall).
    fn checks_in(&self, cgroup: &TestCgroup) -> BTreeMap<(String, Verdict, String), &CheckRecord> {
        self.table()
            .records()
            .filter(|record| record.cgroup_id() == cgroup.id())
            .map(|record| {
                (
                    (
                        record.capability_name(),
                        record.verdict(),
                        record.syscall_name(),
                    ),
                    record,
                )
            })
            .collect()
    }

    /// (capability, verdict, syscall) → count for one cgroup.
    fn counts_in(&self, cgroup: &TestCgroup) -> BTreeMap<(String, Verdict, String), u64> {
        self.checks_in(cgroup)
            .into_iter()
            .map(|(key, record)| (key, record.count))
            .collect()
    }
}

fn expected(entries: &[(&str, Verdict, &str, u64)]) -> BTreeMap<(String, Verdict, String), u64> {
    entries
        .iter()
        .map(|(cap, verdict, syscall, count)| {
            (((*cap).to_owned(), *verdict, (*syscall).to_owned()), *count)
        })
        .collect()
}

const ALL_OPERATIONS: &[&str] = &["chown", "sethostname", "raw-icmp", "nice", "bind80"];

#[test]
fn granted_checks_are_counted_exactly_in_their_cgroup() {
    let cgroup = cgroups::create("granted");
    let Some(mut session) = Session::watching(&cgroup) else {
        return;
    };
    Trigger {
        operations: ALL_OPERATIONS,
        times: 5,
        drop_caps: false,
        comm: None,
    }
    .run_in(&cgroup);
    session.collect();
    use Verdict::Granted;
    assert_eq!(
        session.counts_in(&cgroup),
        expected(&[
            ("CAP_CHOWN", Granted, "fchownat", 5),
            ("CAP_NET_BIND_SERVICE", Granted, "bind", 5),
            ("CAP_NET_RAW", Granted, "socket", 5),
            ("CAP_SYS_ADMIN", Granted, "sethostname", 5),
            ("CAP_SYS_NICE", Granted, "setpriority", 5),
        ])
    );
    let counters = session.table().counters();
    assert_eq!(counters.checks_dropped, 0, "{counters:?}");
}

#[test]
fn checks_are_denied_after_dropping_capabilities() {
    let cgroup = cgroups::create("denied");
    let Some(mut session) = Session::watching(&cgroup) else {
        return;
    };
    Trigger {
        operations: ALL_OPERATIONS,
        times: 3,
        drop_caps: true,
        comm: None,
    }
    .run_in(&cgroup);
    session.collect();
    use Verdict::Denied;
    assert_eq!(
        session.counts_in(&cgroup),
        expected(&[
            ("CAP_CHOWN", Denied, "fchownat", 3),
            ("CAP_NET_BIND_SERVICE", Denied, "bind", 3),
            ("CAP_NET_RAW", Denied, "socket", 3),
            ("CAP_SYS_ADMIN", Denied, "sethostname", 3),
            ("CAP_SYS_NICE", Denied, "setpriority", 3),
        ])
    );
}

#[test]
fn a_process_in_another_cgroup_is_not_attributed_to_this_one() {
    let (chowner, hostnamer) = (cgroups::create("chowner"), cgroups::create("hostnamer"));
    let Some(mut session) = Session::start(TracerOptions::default()) else {
        return;
    };
    Trigger {
        operations: &["chown"],
        times: 4,
        drop_caps: false,
        comm: None,
    }
    .run_in(&chowner);
    Trigger {
        operations: &["sethostname"],
        times: 6,
        drop_caps: false,
        comm: None,
    }
    .run_in(&hostnamer);
    session.collect();
    use Verdict::Granted;
    assert_eq!(
        session.counts_in(&chowner),
        expected(&[("CAP_CHOWN", Granted, "fchownat", 4)])
    );
    assert_eq!(
        session.counts_in(&hostnamer),
        expected(&[("CAP_SYS_ADMIN", Granted, "sethostname", 6)])
    );
}

#[test]
fn the_in_kernel_cgroup_filter_counts_nothing_else() {
    let (watched, other) = (cgroups::create("watched"), cgroups::create("unwatched"));
    let Some(mut session) = Session::start(TracerOptions {
        cgroup_id: Some(watched.id()),
        ..Default::default()
    }) else {
        return;
    };
    Trigger {
        operations: &["raw-icmp"],
        times: 2,
        drop_caps: false,
        comm: None,
    }
    .run_in(&other);
    Trigger {
        operations: &["nice"],
        times: 3,
        drop_caps: false,
        comm: None,
    }
    .run_in(&watched);
    session.collect();
    let cgroups: Vec<u64> = session
        .table()
        .records()
        .map(|record| record.cgroup_id())
        .collect();
    assert!(
        cgroups.iter().all(|&id| id == watched.id()),
        "only cgroup {} expected, saw {cgroups:?}",
        watched.id()
    );
    assert_eq!(
        session.counts_in(&watched),
        expected(&[("CAP_SYS_NICE", Verdict::Granted, "setpriority", 3)])
    );
}

#[test]
fn stacks_name_the_kernel_functions_that_checked() {
    let cgroup = cgroups::create("stacks");
    let Some(mut session) = Session::watching(&cgroup) else {
        return;
    };
    let pid = Trigger {
        operations: ALL_OPERATIONS,
        times: 1,
        drop_caps: false,
        comm: None,
    }
    .run_in(&cgroup);
    session.collect();
    let checks = session.checks_in(&cgroup);
    // A frame every kernel since 5.x has on each path; inlining may hide the others.
    let expected_frames = [
        ("CAP_CHOWN", "setattr_prepare"),
        ("CAP_NET_BIND_SERVICE", "inet_bind"),
        ("CAP_NET_RAW", "inet_create"),
        ("CAP_SYS_ADMIN", "sys_sethostname"),
        ("CAP_SYS_NICE", "can_nice"),
    ];
    for (cap, frame) in expected_frames {
        let (_, record) = checks
            .iter()
            .find(|((name, _, _), _)| name == cap)
            .unwrap_or_else(|| panic!("no {cap} check recorded: {checks:?}"));
        let site = record
            .call_sites
            .first()
            .unwrap_or_else(|| panic!("{cap}: no call site"));
        assert!(
            site.stack.iter().any(|f| f.contains(frame)),
            "{cap}: expected a frame containing `{frame}` in {:?}",
            site.stack
        );
        assert!(
            site.stack
                .iter()
                .any(|f| f.starts_with("security_capable") || f.starts_with("cap_capable")),
            "{cap}: {:?}",
            site.stack
        );
        assert!(
            !site.stack.first().is_some_and(|f| f.starts_with("bpf_")),
            "{cap}: tracing frames must be trimmed: {:?}",
            site.stack
        );
        assert_eq!(site.sighting.tgid, pid, "{cap}: made by the trigger");
        assert_eq!(site.sighting.comm, "capprof-trigger");
        assert_eq!(site.sighting.uid, 0);
    }
}

#[test]
fn silent_overcommit_probe_has_its_opts_observed_where_the_path_sees_them() {
    let cgroup = cgroups::create("mmap");
    let Some(mut session) = Session::watching(&cgroup) else {
        return;
    };
    Trigger {
        operations: &["mmap"],
        times: 4,
        drop_caps: false,
        comm: None,
    }
    .run_in(&cgroup);
    session.collect();
    let checks = session.checks_in(&cgroup);
    let mode = session.trace.attach_choice().mode;
    let key = (
        "CAP_SYS_ADMIN".to_owned(),
        Verdict::Granted,
        "mmap".to_owned(),
    );
    let Some(record) = checks.get(&key) else {
        // `cap_vm_enough_memory` calls `cap_capable` directly, and kernels may inline that call
        // (Debian 12's 6.1 and 6.12 do): fexit and kprobes hook only the out-of-line function
        // and never see it. The tracepoint sits inside `cap_capable`, so it fires in inlined
        // copies too.
        assert!(
            mode.observes_opts(),
            "the {mode} path must see the overcommit check: {checks:?}"
        );
        assert!(checks.is_empty(), "mmap makes no other check: {checks:?}");
        eprintln!(
            "note: the kernel inlines cap_capable into cap_vm_enough_memory; {mode} cannot see it"
        );
        return;
    };
    assert_eq!(record.count, 4);
    assert!(
        record.call_sites[0]
            .stack
            .iter()
            .any(|frame| frame.contains("vm_enough_memory")),
        "{:?}",
        record.call_sites[0].stack
    );
    assert_opts_match_the_path(record, mode);
    assert_classified_advisory_by_the_right_rule(record, mode);
}

#[test]
fn silent_seccomp_probe_has_its_opts_observed_where_the_path_sees_them() {
    let cgroup = cgroups::create("seccomp");
    let Some(mut session) = Session::watching(&cgroup) else {
        return;
    };
    Trigger {
        operations: &["seccomp"],
        times: 4,
        drop_caps: false,
        comm: None,
    }
    .run_in(&cgroup);
    session.collect();
    let checks = session.checks_in(&cgroup);
    let key = (
        "CAP_SYS_ADMIN".to_owned(),
        Verdict::Granted,
        "seccomp".to_owned(),
    );
    let record = checks
        .get(&key)
        .unwrap_or_else(|| panic!("no seccomp filter check: {checks:?}"));
    // do_seccomp asks once per filter; for classic BPF the x86 JIT asks again on each compile
    // pass (its Spectre-BHB barrier, backported to 6.1), so only a lower bound holds.
    assert!(
        record.count >= 4,
        "{} checks, call sites: {:#?}",
        record.count,
        record.call_sites
    );
    let from_seccomp = record
        .call_sites
        .iter()
        .find(|site| {
            let called_by = |name: &str| site.stack.iter().any(|frame| frame.contains(name));
            called_by("seccomp") && !called_by("jit")
        })
        .unwrap_or_else(|| panic!("no call site in seccomp itself: {:#?}", record.call_sites));
    assert!(
        from_seccomp
            .stack
            .iter()
            .any(|f| f.starts_with("security_capable") || f.starts_with("cap_capable")),
        "{:?}",
        from_seccomp.stack
    );
    let mode = session.trace.attach_choice().mode;
    assert_opts_match_the_path(record, mode);
    assert_classified_advisory_by_the_right_rule(record, mode);
}

/// Whichever the path, a silent probe is advisory: from observed `opts` where the path sees them,
/// from the call site on the tracepoint. Both routes must agree.
fn assert_classified_advisory_by_the_right_rule(record: &CheckRecord, mode: AttachMode) {
    let entry = capprof::fold::profile_entry(record, capprof::fold::Clock::now());
    let entries = [entry.clone()];
    let classified = capprof::classify::classify_entry(
        &capprof::classify::Context { entries: &entries },
        &entry,
    );
    let expected_rule = if mode.observes_opts() {
        "noaudit-observed"
    } else {
        "noaudit-call-site"
    };
    assert_eq!(
        (classified.class, classified.rule),
        (capprof::classify::CheckClass::Advisory, expected_rule),
        "mode {mode}: {}",
        classified.reason
    );
}

/// A silent (`CAP_OPT_NOAUDIT`) check: fexit and kprobes see the flag, the tracepoint cannot.
fn assert_opts_match_the_path(record: &CheckRecord, mode: AttachMode) {
    if mode.observes_opts() {
        assert_eq!(
            record.opts(),
            Opts::Observed {
                noaudit: true,
                insetid: false
            },
            "mode {mode}"
        );
    } else {
        assert_eq!(record.opts(), Opts::Unknown, "mode {mode}");
    }
}

#[test]
fn counts_stay_exact_when_the_event_ring_buffer_overflows() {
    let cgroups: Vec<TestCgroup> = (0..80).map(|_| cgroups::create("flood")).collect();
    let Some(mut session) = Session::start(TracerOptions {
        events_bytes: 4096,
        ..Default::default()
    }) else {
        return;
    };
    for cgroup in &cgroups {
        Trigger {
            operations: &["chown"],
            times: 3,
            drop_caps: false,
            comm: None,
        }
        .run_in(cgroup);
    }
    // One read at the end: the 4 KiB ring buffer holds about 46 events, and 80 are due.
    session.collect();
    let counters = session.table().counters();
    assert!(
        counters.events_lost > 0,
        "the ring buffer should have overflowed: {counters:?}"
    );
    assert_eq!(counters.checks_dropped, 0);
    let mut without_details = 0;
    for cgroup in &cgroups {
        let checks = session.checks_in(cgroup);
        let key = (
            "CAP_CHOWN".to_owned(),
            Verdict::Granted,
            "fchownat".to_owned(),
        );
        let record = checks
            .get(&key)
            .unwrap_or_else(|| panic!("cgroup {}: {checks:?}", cgroup.id()));
        assert_eq!(record.count, 3, "cgroup {}", cgroup.id());
        if record.call_sites.is_empty() {
            without_details += 1;
        }
    }
    assert!(
        without_details > 0,
        "some first sightings must have been lost"
    );
}

#[test]
fn the_chosen_attach_path_follows_the_ladder() {
    let Some(session) = Session::start(TracerOptions::default()) else {
        return;
    };
    let choice = session.trace.attach_choice();
    let candidates = requested_attach().candidates();
    let position = candidates
        .iter()
        .position(|&mode| mode == choice.mode)
        .expect("chosen mode is a candidate");
    let skipped: Vec<AttachMode> = choice.skipped.iter().map(|skip| skip.mode).collect();
    assert_eq!(
        skipped,
        candidates[..position],
        "every stronger path was tried first: {}",
        choice.explain()
    );
    assert!(choice.skipped.iter().all(|skip| !skip.reason.is_empty()));
}

#[test]
fn a_forced_mode_the_kernel_lacks_names_the_missing_feature() {
    if !ci::require_root() {
        return;
    }
    let mut unavailable = 0;
    for mode in AttachMode::LADDER {
        let request = AttachRequest::from(mode);
        match Tracer::load(&TracerOptions {
            attach: request,
            ..Default::default()
        }) {
            Ok(tracer) => assert_eq!(tracer.attach_choice().mode, mode),
            Err(error @ LoadError::NoAttachPath { .. }) => {
                unavailable += 1;
                let message = error.to_string();
                assert!(
                    message.contains(&format!("--attach {mode} cannot be used")),
                    "{message}"
                );
                assert!(message.contains(mode.requirement()), "{message}");
            }
            Err(other) => panic!("{mode}: unexpected error {other}"),
        }
    }
    assert!(
        unavailable < AttachMode::LADDER.len(),
        "at least one mode must load"
    );
}

#[test]
fn checks_made_by_a_runtime_init_are_flagged() {
    let cgroup = cgroups::create("runtime-init");
    let Some(mut session) = Session::watching(&cgroup) else {
        return;
    };
    Trigger {
        operations: &["chown"],
        times: 2,
        drop_caps: false,
        comm: Some("runc:[2:INIT]"),
    }
    .run_in(&cgroup);
    Trigger {
        operations: &["chown"],
        times: 3,
        drop_caps: false,
        comm: Some("runcible"),
    }
    .run_in(&cgroup);
    session.collect();
    let chowns: Vec<(bool, u64)> = session
        .table()
        .records()
        .filter(|record| record.cgroup_id() == cgroup.id())
        .map(|record| (record.runtime_init(), record.count))
        .collect();
    assert_eq!(chowns.len(), 2, "{chowns:?}");
    assert!(
        chowns.contains(&(true, 2)),
        "runc:[2:INIT] is the runtime: {chowns:?}"
    );
    assert!(chowns.contains(&(false, 3)), "runcible is not: {chowns:?}");
}

#[test]
fn the_benchmark_floor_attaches_on_the_path_under_test() {
    let Some(session) = Session::start(TracerOptions::default()) else {
        return;
    };
    let mode = session.trace.attach_choice().mode;
    drop(session);
    let links_to = |program_id: u32| {
        aya::programs::loaded_links()
            .filter_map(Result::ok)
            .filter(|link| link.program_id() == program_id)
            .count()
    };
    let empty = EmptyProgram::attach_to(mode).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(empty.mode(), mode);
    let id = empty.program_id();
    // Before Linux 5.15 a kprobe hangs on a perf event, not on a BPF link the kernel lists.
    if mode != AttachMode::Kprobe || aya::features().bpf_perf_link() {
        assert_eq!(
            links_to(id),
            1,
            "{mode}: program {id} is attached by one link"
        );
    }
    drop(empty);
    assert_eq!(
        links_to(id),
        0,
        "{mode}: program {id} is detached after drop"
    );
}

#[test]
fn a_removed_cgroup_can_be_forgotten_and_stays_forgotten() {
    let cgroup = cgroups::create("forget");
    let cgroup_id = cgroup.id();
    let Some(mut session) = Session::start(TracerOptions::default()) else {
        return;
    };
    Trigger {
        operations: &["chown", "nice"],
        times: 3,
        drop_caps: false,
        comm: None,
    }
    .run_in(&cgroup);
    session.collect();
    assert_eq!(session.counts_in(&cgroup).values().sum::<u64>(), 6);
    drop(cgroup);
    assert!(
        capprof::cgroup::path_of_id(cgroup_id)
            .expect("look up")
            .is_none(),
        "the cgroup is removed"
    );

    session
        .trace
        .forget_cgroups(&std::collections::HashSet::from([cgroup_id]))
        .expect("forget");
    session.collect();
    let left: Vec<u64> = session
        .table()
        .records()
        .map(|record| record.cgroup_id())
        .filter(|id| *id == cgroup_id)
        .collect();
    assert!(
        left.is_empty(),
        "neither the hash map nor a hot slot brings the cgroup back: {left:?}"
    );
}
