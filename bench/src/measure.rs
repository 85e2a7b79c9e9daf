//! Runs one child process and measures it: wall time from spawn to reap, and the kernel's
//! accounting from `wait4` (peak resident set, user and system CPU time).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What one run of one command did.
#[derive(Clone, Debug)]
pub struct Measured {
    pub wall: Duration,
    /// Peak resident set size of the child (and any children it reaped), in bytes.
    pub max_rss: u64,
    pub user: Duration,
    pub sys: Duration,
    /// Raw wait status; see [`Measured::success`].
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The run's private scratch directory (it holds `stdout` and `stderr` files too).
    pub scratch: PathBuf,
    /// The command line, for messages.
    pub command: String,
}

impl Measured {
    pub fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    pub fn describe_status(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit code {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("wait status {:#x}", self.status)
        }
    }

    #[allow(dead_code)] // for cases' checks
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// The first argument that makes `etcdguard-bench` a [`launcher`].
pub const LAUNCHER_ARG: &str = "__measure-child";

/// Runs `cmd` with stdin from /dev/null and stdout/stderr into files in `scratch` (so no
/// reader thread competes with the child), through a small [`launcher`] process that reaps
/// it with `wait4` and passes its rusage on.
///
/// Why the launcher: Linux carries a process's peak RSS into a child it starts (a forked
/// or vforked child's memory starts as the parent's, and exec keeps the larger peak), so a
/// child of this harness, which holds the outputs of earlier runs and grew while it made the
/// dataset, would report at least the harness's size. The launcher is freshly exec'd and
/// small, so what its child reports is the child's own.
pub fn run(cmd: &mut Command, scratch: &Path) -> Result<Measured> {
    let out_path = scratch.join("stdout");
    let err_path = scratch.join("stderr");
    let usage_path = scratch.join("rusage");
    let out = File::create(&out_path).with_context(|| format!("create {}", out_path.display()))?;
    let err = File::create(&err_path).with_context(|| format!("create {}", err_path.display()))?;
    let command = format!("{cmd:?}");
    let mut launch = Command::new(std::env::current_exe().context("the harness's own path")?);
    launch.arg(LAUNCHER_ARG).arg(&usage_path).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => launch.env(k, v),
            None => launch.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        launch.current_dir(dir);
    }
    launch.stdin(Stdio::null()).stdout(out).stderr(err);

    let start = Instant::now();
    let status = launch.status().with_context(|| format!("cannot start {command}"))?;
    let wall = start.elapsed();
    let report = std::fs::read_to_string(&usage_path).unwrap_or_default();
    let fields: Vec<i64> = report.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let [status, max_rss_kib, user_us, sys_us] = fields[..] else {
        bail!("cannot start {command}: {} (launcher {status})", report.trim());
    };
    Ok(Measured {
        wall,
        max_rss: max_rss_kib as u64 * 1024,
        user: Duration::from_micros(user_us as u64),
        sys: Duration::from_micros(sys_us as u64),
        status: status as i32,
        stdout: std::fs::read(&out_path)?,
        stderr: std::fs::read(&err_path)?,
        scratch: scratch.to_path_buf(),
        command,
    })
}

/// The launcher (`etcdguard-bench __measure-child USAGE_FILE PROGRAM ARGS…`): runs PROGRAM
/// with the stdio it was given, reaps it with `wait4`, and writes `status maxrss_kib user_us
/// sys_us` (or why it could not start) to USAGE_FILE. Returns its exit code.
pub fn launcher(args: Vec<std::ffi::OsString>) -> i32 {
    let [usage_path, program, rest @ ..] = &args[..] else {
        eprintln!("usage: etcdguard-bench {LAUNCHER_ARG} USAGE_FILE PROGRAM [ARGS…]");
        return 2;
    };
    let child = match Command::new(program).args(rest).spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::write(usage_path, format!("{e}"));
            return 1;
        }
    };
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid value of a plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = loop {
        // SAFETY: waiting for our own child; both out-pointers are valid for writes.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break rc;
    };
    if rc != pid {
        let _ = std::fs::write(
            usage_path,
            format!("wait4({pid}) failed: {}", std::io::Error::last_os_error()),
        );
        return 1;
    }
    // The child is reaped; std's handle must not wait for it again (dropping it does not).
    drop(child);
    let micros = |tv: libc::timeval| tv.tv_sec * 1_000_000 + tv.tv_usec;
    // Linux reports ru_maxrss in KiB.
    let line = format!(
        "{status} {} {} {}\n",
        usage.ru_maxrss,
        micros(usage.ru_utime),
        micros(usage.ru_stime)
    );
    match std::fs::write(usage_path, line) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}
