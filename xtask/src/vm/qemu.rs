//! Runs one guest under `qemu-system-x86_64` and reads its `CAPPROF-VM-*` report from the serial
//! console.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

const QEMU: &str = "qemu-system-x86_64";
/// How long a KVM guest may take to print its first marker before KVM is deemed unusable for
/// this kernel and the run starts over under TCG. An ordinary boot takes a second or two.
const KVM_BOOT_GRACE: Duration = Duration::from_secs(60);

/// `--accel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when it can boot an ordinary kernel here, TCG otherwise.
    Auto,
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's software emulation: slower, works everywhere.
    Tcg,
}

/// The accelerator used, and why.
#[derive(Clone, Debug)]
pub struct AccelChoice {
    kvm: bool,
    reason: String,
    /// Chosen by `auto`: a KVM guest that does not boot is retried under TCG.
    may_fall_back: bool,
}

impl AccelChoice {
    pub fn describe(&self) -> String {
        format!("{} ({})", if self.kvm { "KVM" } else { "TCG" }, self.reason)
    }

    fn tcg(reason: String) -> Self {
        Self {
            kvm: false,
            reason,
            may_fall_back: false,
        }
    }
}

pub fn find_qemu() -> anyhow::Result<PathBuf> {
    crate::workspace::find_on_path(QEMU).with_context(|| {
        format!(
            "{QEMU} is not installed; install it with `apt-get install qemu-system-x86` or \
             `cargo xtask setup --vm`"
        )
    })
}

pub fn choose_accel(requested: Accel) -> anyhow::Result<AccelChoice> {
    match requested {
        Accel::Tcg => Ok(AccelChoice::tcg("requested with --accel tcg".to_owned())),
        Accel::Kvm => match kvm_unusable_reason() {
            None => Ok(AccelChoice {
                kvm: true,
                reason: "requested with --accel kvm".to_owned(),
                may_fall_back: false,
            }),
            Some(reason) => bail!("--accel kvm: {reason}; use --accel tcg"),
        },
        Accel::Auto => Ok(match kvm_unusable_reason() {
            None => AccelChoice {
                kvm: true,
                reason: "/dev/kvm works".to_owned(),
                may_fall_back: true,
            },
            Some(reason) => AccelChoice::tcg(reason),
        }),
    }
}

/// Why KVM cannot run Debian's kernels here, or `None` when it looks able to.
fn kvm_unusable_reason() -> Option<String> {
    let device = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(device) => device,
        Err(error) => return Some(format!("cannot open /dev/kvm: {error}")),
    };
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    const KVM_API_VERSION: libc::c_int = 12;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a number.
    let version = unsafe { libc::ioctl(device.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version != KVM_API_VERSION {
        return Some(format!(
            "/dev/kvm answers KVM_GET_API_VERSION with {version}, not {KVM_API_VERSION}"
        ));
    }
    // PVM (pagetable-based virtual machines, used for nested guests in some clouds) exposes
    // /dev/kvm but only runs kernels built as PVM guests: Debian's hang right after loading.
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some(
            "/dev/kvm is provided by kvm_pvm, which runs only PVM-enabled guest kernels".to_owned(),
        );
    }
    None
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct GuestSettings {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
    pub timeout: Duration,
    pub modes: Vec<&'static str>,
    pub bench: bool,
    /// Extra arguments for the test binaries.
    pub test_args: Vec<String>,
    /// The serial console is copied here.
    pub log: PathBuf,
}

impl GuestSettings {
    fn command(&self, accel: &AccelChoice, interactive: bool) -> Command {
        let mut append = vec![
            "console=ttyS0".to_owned(),
            "panic=-1".to_owned(),
            // Warnings and worse reach the console (a BPF splat must be seen), boot chatter not.
            "loglevel=4".to_owned(),
            format!("capprof.modes={}", self.modes.join(",")),
        ];
        if self.bench {
            append.push("capprof.bench=1".to_owned());
        }
        if !self.test_args.is_empty() {
            append.push(format!("capprof.test_args={}", self.test_args.join(",")));
        }
        if interactive {
            append.push("capprof.shell=1".to_owned());
        }
        let mut command = Command::new(&self.qemu);
        command
            .args(["-nodefaults", "-no-user-config", "-no-reboot"])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initramfs)
            .args(["-append", &append.join(" ")]);
        if accel.kvm {
            command.args(["-accel", "kvm", "-cpu", "host"]);
        } else {
            // `max` offers RDRAND, so the guest's random pool is ready at once.
            command.args(["-accel", "tcg", "-cpu", "max"]);
        }
        if interactive {
            command.args(["-nographic", "-serial", "mon:stdio"]);
        } else {
            command.args(["-display", "none", "-serial", "stdio", "-monitor", "none"]);
        }
        command
    }
}

/// How one attach mode went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeStatus {
    Pass,
    /// The kernel does not offer the mode.
    Skip(String),
    Fail(String),
}

#[derive(Debug, Clone)]
pub struct ModeResult {
    pub status: ModeStatus,
    pub elapsed: Option<Duration>,
}

/// Everything the guest reported.
#[derive(Debug, Default)]
pub struct GuestReport {
    /// `uname -r` in the guest.
    pub kernel_release: Option<String>,
    /// Which hooks the kernel has, as the guest saw them.
    pub offers: Option<String>,
    pub modes: BTreeMap<String, ModeResult>,
    /// `capprof doctor`'s exit status.
    pub doctor_exit: Option<i32>,
    pub bench_requested: bool,
    /// One line per measured mode.
    pub bench: Vec<String>,
    /// The guest finished its script.
    pub done: bool,
    /// Why the run is incomplete: a timeout, a crash, a missing marker.
    pub problem: Option<String>,
}

/// One parsed `CAPPROF-VM-*` line.
#[derive(Debug, PartialEq, Eq)]
enum Marker {
    Booted { release: String },
    Offers(String),
    Doctor { exit: i32 },
    Start { mode: String },
    Result { mode: String, status: ModeStatus },
    Bench(String),
    Done,
}

fn parse_marker(line: &str) -> Option<Marker> {
    let rest = &line[line.find("CAPPROF-VM-")? + "CAPPROF-VM-".len()..];
    let (kind, fields) = rest.split_once(' ').unwrap_or((rest, ""));
    let field = |name: &str| {
        fields
            .split(' ')
            .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    Some(match kind {
        "BOOTED" => Marker::Booted {
            release: field("kernel")?,
        },
        "OFFERS" => Marker::Offers(fields.to_owned()),
        "DOCTOR" => Marker::Doctor {
            exit: field("exit")?.parse().ok()?,
        },
        "START" => Marker::Start {
            mode: field("mode")?,
        },
        "RESULT" => {
            // `detail=` is last and may contain spaces.
            let detail = fields
                .split_once("detail=")
                .map(|(_, detail)| detail.to_owned())
                .unwrap_or_default();
            let status = match field("status")?.as_str() {
                "pass" => ModeStatus::Pass,
                "skip" => ModeStatus::Skip(detail),
                _ => ModeStatus::Fail(detail),
            };
            Marker::Result {
                mode: field("mode")?,
                status,
            }
        }
        "BENCH" => Marker::Bench(fields.to_owned()),
        "DONE" => Marker::Done,
        _ => return None,
    })
}

/// Boots the guest, streams its console to stdout and the log, and collects its report. A KVM
/// guest chosen by `auto` that never boots is retried under TCG; the accelerator actually used
/// is returned.
pub fn run_guest(
    settings: &GuestSettings,
    accel: AccelChoice,
) -> anyhow::Result<(GuestReport, AccelChoice)> {
    match run_once(settings, &accel)? {
        Attempt::Finished(report) => Ok((report, accel)),
        Attempt::NeverBooted(why) => {
            let fallback = AccelChoice::tcg(format!("KVM was tried first, but {why}"));
            eprintln!("vm-test: retrying under {}", fallback.describe());
            match run_once(settings, &fallback)? {
                Attempt::Finished(report) => Ok((report, fallback)),
                Attempt::NeverBooted(_) => unreachable!("TCG runs are never retried"),
            }
        }
    }
}

enum Attempt {
    Finished(GuestReport),
    /// A KVM guest chosen by `auto` did not reach /init, for this reason.
    NeverBooted(String),
}

fn run_once(settings: &GuestSettings, accel: &AccelChoice) -> anyhow::Result<Attempt> {
    let mut log = std::io::BufWriter::new(
        std::fs::File::create(&settings.log)
            .with_context(|| format!("creating {}", settings.log.display()))?,
    );
    let mut command = settings.command(accel, false);
    writeln!(log, "# {command:?}")?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", settings.qemu.display()))?;
    let lines = spawn_line_reader(child.stdout.take().context("qemu stdout")?);
    let mut stderr = child.stderr.take().context("qemu stderr")?;
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let started = Instant::now();
    let deadline = started + settings.timeout;
    let mut report = GuestReport {
        bench_requested: settings.bench,
        ..GuestReport::default()
    };
    let mut mode_started: BTreeMap<String, Instant> = BTreeMap::new();
    let mut booted = false;
    loop {
        let now = Instant::now();
        let watchdog = if accel.may_fall_back && !booted {
            (started + KVM_BOOT_GRACE).min(deadline)
        } else {
            deadline
        };
        match lines.recv_timeout(watchdog.saturating_duration_since(now)) {
            Ok(line) => {
                writeln!(log, "{line}")?;
                println!("  │ {line}");
                let Some(marker) = parse_marker(&line) else {
                    continue;
                };
                booted = true;
                match marker {
                    Marker::Booted { release } => report.kernel_release = Some(release),
                    Marker::Offers(offers) => report.offers = Some(offers),
                    Marker::Doctor { exit } => report.doctor_exit = Some(exit),
                    Marker::Start { mode } => {
                        mode_started.insert(mode, Instant::now());
                    }
                    Marker::Result { mode, status } => {
                        let elapsed = mode_started.get(&mode).map(Instant::elapsed);
                        report.modes.insert(mode, ModeResult { status, elapsed });
                    }
                    Marker::Bench(line) => report.bench.push(line),
                    Marker::Done => report.done = true,
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                stop(&mut child);
                if !booted && accel.may_fall_back && Instant::now() < deadline {
                    let _ = child.wait();
                    log.flush()?;
                    return Ok(Attempt::NeverBooted(format!(
                        "the guest printed nothing in {} s",
                        KVM_BOOT_GRACE.as_secs()
                    )));
                }
                report.problem = Some(format!(
                    "the VM was stopped after {} s (--timeout); see {}",
                    settings.timeout.as_secs(),
                    settings.log.display()
                ));
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    let qemu_stderr = stderr_reader.join().unwrap_or_default();
    if !qemu_stderr.trim().is_empty() {
        writeln!(log, "# qemu stderr:\n{qemu_stderr}")?;
        eprintln!("vm-test: qemu said: {}", qemu_stderr.trim());
    }
    log.flush()?;
    if !booted && accel.may_fall_back && report.problem.is_none() {
        return Ok(Attempt::NeverBooted(format!(
            "QEMU stopped before the guest reached /init ({status})"
        )));
    }
    if report.problem.is_none() && !report.done {
        report.problem = Some(format!(
            "the guest stopped before it finished ({}, qemu {status}); see {}",
            if report.kernel_release.is_none() {
                "it never reached /init"
            } else {
                "no CAPPROF-VM-DONE"
            },
            settings.log.display()
        ));
    }
    Ok(Attempt::Finished(report))
}

/// Kills QEMU, the child this module started.
fn stop(child: &mut Child) {
    let _ = child.kill();
}

/// Reads the console line by line on a thread; the channel closes when QEMU exits.
fn spawn_line_reader(stdout: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = printable(&String::from_utf8_lossy(&buffer));
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    receiver
}

/// Drops terminal escape sequences and control characters (the firmware clears the screen).
fn printable(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte; other escapes: ESC + one character.
            if chars.next_if_eq(&'[').is_some() {
                while chars.next().is_some_and(|c| !c.is_ascii_alphabetic()) {}
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// `--shell`: boots the guest with the console on this terminal.
pub fn interactive(settings: &GuestSettings, accel: &AccelChoice) -> anyhow::Result<()> {
    let status = settings
        .command(accel, true)
        .status()
        .with_context(|| format!("starting {}", settings.qemu.display()))?;
    if !status.success() {
        bail!("qemu exited with {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_parse() {
        assert_eq!(
            parse_marker("CAPPROF-VM-BOOTED kernel=6.1.0-57-amd64"),
            Some(Marker::Booted {
                release: "6.1.0-57-amd64".to_owned()
            })
        );
        assert_eq!(
            parse_marker("[   3.2] junk CAPPROF-VM-RESULT mode=kprobe status=pass"),
            Some(Marker::Result {
                mode: "kprobe".to_owned(),
                status: ModeStatus::Pass
            })
        );
        assert_eq!(
            parse_marker(
                "CAPPROF-VM-RESULT mode=tracepoint status=skip detail=no tracepoint (Linux 6.14+)"
            ),
            Some(Marker::Result {
                mode: "tracepoint".to_owned(),
                status: ModeStatus::Skip("no tracepoint (Linux 6.14+)".to_owned())
            })
        );
        assert_eq!(
            parse_marker(
                "CAPPROF-VM-RESULT mode=fentry status=fail detail=failed: tracer:exit-101"
            ),
            Some(Marker::Result {
                mode: "fentry".to_owned(),
                status: ModeStatus::Fail("failed: tracer:exit-101".to_owned())
            })
        );
        assert_eq!(parse_marker("CAPPROF-VM-DONE"), Some(Marker::Done));
        assert_eq!(
            parse_marker("CAPPROF-VM-DOCTOR exit=4"),
            Some(Marker::Doctor { exit: 4 })
        );
        assert_eq!(parse_marker("CAPPROF-VM-RESULT status=pass"), None);
        assert_eq!(parse_marker("test result: ok"), None);
    }

    #[test]
    fn console_noise_is_cleaned() {
        assert_eq!(printable("\x1bc\x1b[?7l\x1b[2JSeaBIOS\r\n"), "SeaBIOS");
        assert_eq!(printable("a\tb"), "a\tb");
    }
}
