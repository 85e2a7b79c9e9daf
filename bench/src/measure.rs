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

/// Runs `cmd` with stdin from /dev/null and stdout/stderr into files in `scratch` (so no
/// reader thread competes with the child), and reaps it with `wait4` to read its rusage.
pub fn run(cmd: &mut Command, scratch: &Path) -> Result<Measured> {
    let out_path = scratch.join("stdout");
    let err_path = scratch.join("stderr");
    let out = File::create(&out_path).with_context(|| format!("create {}", out_path.display()))?;
    let err = File::create(&err_path).with_context(|| format!("create {}", err_path.display()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let command = format!("{cmd:?}");

    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("cannot start {command}"))?;
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
    let wall = start.elapsed();
    if rc != pid {
        bail!("wait4({pid}) failed: {}", std::io::Error::last_os_error());
    }
    // The child is reaped; std's handle must not wait for it again (dropping it does not).
    drop(child);

    Ok(Measured {
        wall,
        // Linux reports ru_maxrss in KiB.
        max_rss: usage.ru_maxrss as u64 * 1024,
        user: timeval(usage.ru_utime),
        sys: timeval(usage.ru_stime),
        status,
        stdout: std::fs::read(&out_path)?,
        stderr: std::fs::read(&err_path)?,
        scratch: scratch.to_path_buf(),
        command,
    })
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
}
