//! Makes known capability checks inside a given cgroup, for capprof's integration tests.
//!
//! ```text
//! capprof-trigger [--cgroup DIR] --workdir DIR [--times N] [--drop-caps] [--comm NAME] OPERATION...
//! ```
//!
//! Operations and the one check each makes per repetition:
//!
//! | operation     | check                 | how                                                  |
//! |---------------|-----------------------|------------------------------------------------------|
//! | `chown`       | CAP_CHOWN             | `fchownat` of a file owned by another uid            |
//! | `sethostname` | CAP_SYS_ADMIN         | `sethostname` in a private UTS namespace             |
//! | `raw-icmp`    | CAP_NET_RAW           | `socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)`            |
//! | `nice`        | CAP_SYS_NICE          | `setpriority` to -5 (after resetting to 0)           |
//! | `bind80`      | CAP_NET_BIND_SERVICE  | `bind` to port 80 in a private network namespace whose `ip_unprivileged_port_start` is 1024 |
//! | `mmap`        | CAP_SYS_ADMIN, NOAUDIT| a private writable `mmap`: the overcommit check `cap_vm_enough_memory` asks silently |
//! | `seccomp`     | CAP_SYS_ADMIN, NOAUDIT| installing an allow-all seccomp filter without `no_new_privs`: `ns_capable_noaudit` |
//!
//! Everything that makes other checks (creating namespaces, files, dropping capabilities,
//! allocating) happens *before* the process joins the cgroup, and nothing after it allocates or
//! prints, so the cgroup sees exactly the checks above. Results are reported through the exit
//! status: 0 when every operation gave the expected outcome (success, or `EPERM`/`EACCES` with
//! `--drop-caps`), 1 otherwise, 2 on bad usage.

use std::{ffi::CString, io::Write, os::unix::ffi::OsStrExt, path::PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Chown,
    Sethostname,
    RawIcmp,
    Nice,
    Bind80,
    Mmap,
    Seccomp,
}

impl Operation {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "chown" => Self::Chown,
            "sethostname" => Self::Sethostname,
            "raw-icmp" => Self::RawIcmp,
            "nice" => Self::Nice,
            "bind80" => Self::Bind80,
            "mmap" => Self::Mmap,
            "seccomp" => Self::Seccomp,
            _ => return None,
        })
    }
}

struct Options {
    cgroup: PathBuf,
    /// Where `chown` creates its file; the caller removes it.
    workdir: PathBuf,
    times: u32,
    drop_caps: bool,
    /// A task name to take before the operations, e.g. `runc:[2:INIT]`.
    comm: Option<CString>,
    operations: Vec<Operation>,
}

fn usage(message: &str) -> ! {
    eprintln!("capprof-trigger: {message}");
    eprintln!(
        "usage: capprof-trigger [--cgroup DIR] [--workdir DIR] [--times N] [--drop-caps] [--comm NAME] chown|sethostname|raw-icmp|nice|bind80|mmap|seccomp..."
    );
    std::process::exit(2);
}

fn parse_options() -> Options {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        cgroup: PathBuf::new(),
        workdir: std::env::temp_dir(),
        times: 1,
        drop_caps: false,
        comm: None,
        operations: Vec::new(),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cgroup" => {
                options.cgroup = args
                    .next()
                    .unwrap_or_else(|| usage("--cgroup needs a directory"))
                    .into()
            }
            "--workdir" => {
                options.workdir = args
                    .next()
                    .unwrap_or_else(|| usage("--workdir needs a directory"))
                    .into()
            }
            "--times" => {
                options.times = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| usage("--times needs a number"))
            }
            "--drop-caps" => options.drop_caps = true,
            "--comm" => {
                let name = args.next().unwrap_or_else(|| usage("--comm needs a name"));
                options.comm = Some(
                    CString::new(name).unwrap_or_else(|_| usage("--comm must not contain NUL")),
                );
            }
            other => options.operations.push(
                Operation::parse(other)
                    .unwrap_or_else(|| usage(&format!("unknown operation `{other}`"))),
            ),
        }
    }
    if options.operations.is_empty() {
        usage("no operation given");
    }
    options
}

/// Fails loudly during setup, while printing is still allowed.
fn check(result: libc::c_long, what: &str) {
    if result < 0 {
        eprintln!(
            "capprof-trigger: {what}: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
}

/// What setup prepared for the operations, so that the measured phase allocates nothing.
struct Prepared {
    chown_target: CString,
    hostname: CString,
    bind_address: libc::sockaddr_in,
    allow_all: [libc::sock_filter; 1],
}

fn prepare(options: &Options) -> Prepared {
    let ops = &options.operations;
    let mut namespaces = 0;
    if ops.contains(&Operation::Sethostname) {
        namespaces |= libc::CLONE_NEWUTS;
    }
    if ops.contains(&Operation::Bind80) {
        namespaces |= libc::CLONE_NEWNET;
    }
    if namespaces != 0 {
        // SAFETY: plain syscall.
        check(unsafe { libc::unshare(namespaces) }.into(), "unshare");
    }
    if ops.contains(&Operation::Bind80) {
        // A fresh network namespace starts at 1024 already; say so explicitly all the same.
        std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "1024")
            .unwrap_or_else(|error| usage(&format!("ip_unprivileged_port_start: {error}")));
    }
    if ops.contains(&Operation::Seccomp) {
        // With no_new_privs set the kernel installs filters without asking for a capability.
        // SAFETY: plain prctl.
        let no_new_privs = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
        if no_new_privs != 0 {
            usage("seccomp needs no_new_privs unset, or the kernel makes no capability check");
        }
    }
    let file = options
        .workdir
        .join(format!("not-mine-{}", std::process::id()));
    if ops.contains(&Operation::Chown) {
        std::fs::write(&file, b"").unwrap_or_else(|error| usage(&format!("create: {error}")));
        std::os::unix::fs::chown(&file, Some(1000), None)
            .unwrap_or_else(|error| usage(&format!("chown: {error}")));
    }
    Prepared {
        chown_target: CString::new(file.as_os_str().as_bytes()).expect("no NUL in a temp path"),
        hostname: CString::new("capprof-test").expect("literal"),
        bind_address: libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 80u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: libc::INADDR_ANY,
            },
            sin_zero: [0; 8],
        },
        allow_all: [libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        }],
    }
}

fn drop_all_capabilities() {
    let header = libc_cap_header();
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a valid header and two data structs (capability version 3).
    check(
        unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) },
        "capset",
    );
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn libc_cap_header() -> CapHeader {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    }
}

fn join_cgroup(cgroup: &std::path::Path) {
    let procs = cgroup.join("cgroup.procs");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .unwrap_or_else(|error| usage(&format!("open {}: {error}", procs.display())));
    // "0" moves the writing process itself.
    file.write_all(b"0")
        .unwrap_or_else(|error| usage(&format!("join {}: {error}", cgroup.display())));
}

/// Runs one repetition of an operation; true when its outcome is the expected one.
fn run(operation: Operation, iteration: u32, prepared: &Prepared, expect_denied: bool) -> bool {
    let denied = |result: libc::c_long| {
        let errno = std::io::Error::last_os_error().raw_os_error();
        result < 0 && matches!(errno, Some(libc::EPERM) | Some(libc::EACCES))
    };
    let outcome = |result: libc::c_long| {
        if expect_denied {
            denied(result)
        } else {
            result >= 0
        }
    };
    // SAFETY (all below): raw syscalls on valid, prepared arguments.
    unsafe {
        match operation {
            Operation::Chown => {
                let uid = if iteration.is_multiple_of(2) {
                    2000
                } else {
                    1000
                };
                let result = libc::syscall(
                    libc::SYS_fchownat,
                    libc::AT_FDCWD,
                    prepared.chown_target.as_ptr(),
                    uid,
                    -1i32 as libc::gid_t,
                    0,
                );
                outcome(result)
            }
            Operation::Sethostname => {
                let name = prepared.hostname.as_bytes();
                outcome(libc::syscall(
                    libc::SYS_sethostname,
                    name.as_ptr(),
                    name.len(),
                ))
            }
            Operation::RawIcmp => {
                let fd = libc::syscall(
                    libc::SYS_socket,
                    libc::AF_INET,
                    libc::SOCK_RAW,
                    libc::IPPROTO_ICMP,
                );
                if fd >= 0 {
                    libc::close(fd as i32);
                }
                outcome(fd)
            }
            Operation::Nice => {
                libc::syscall(libc::SYS_setpriority, libc::PRIO_PROCESS, 0, 0);
                outcome(libc::syscall(
                    libc::SYS_setpriority,
                    libc::PRIO_PROCESS,
                    0,
                    -5,
                ))
            }
            Operation::Mmap => {
                // Silent probes are granted or not, but never fail the call: always expect success.
                let page = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if page == libc::MAP_FAILED {
                    return false;
                }
                libc::munmap(page, 4096);
                true
            }
            Operation::Seccomp => {
                let program = libc::sock_fprog {
                    len: prepared.allow_all.len() as libc::c_ushort,
                    filter: prepared.allow_all.as_ptr().cast_mut(),
                };
                outcome(libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &program as *const libc::sock_fprog,
                ))
            }
            Operation::Bind80 => {
                let fd = libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0);
                if fd < 0 {
                    return false;
                }
                let result = libc::syscall(
                    libc::SYS_bind,
                    fd,
                    &prepared.bind_address as *const libc::sockaddr_in,
                    std::mem::size_of::<libc::sockaddr_in>(),
                );
                let ok = outcome(result);
                libc::close(fd as i32);
                ok
            }
        }
    }
}

fn main() {
    let options = parse_options();
    let prepared = prepare(&options);
    if options.drop_caps {
        drop_all_capabilities();
    }
    if let Some(comm) = &options.comm {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string (truncated to 15 bytes).
        check(
            unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) }.into(),
            "prctl(PR_SET_NAME)",
        );
    }
    // Without --cgroup the trigger stays where it was started (e.g. under `capprof trace --`).
    if !options.cgroup.as_os_str().is_empty() {
        join_cgroup(&options.cgroup);
    }
    let mut all_ok = true;
    for iteration in 0..options.times {
        for &operation in &options.operations {
            all_ok &= run(operation, iteration, &prepared, options.drop_caps);
        }
    }
    // SAFETY: exit without running destructors or flushing: nothing below may make checks.
    unsafe { libc::_exit(if all_ok { 0 } else { 1 }) };
}
