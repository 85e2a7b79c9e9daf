//! Output into a closed pipe (`etcdguard backup show -w json | head -1`).
//!
//! std's `println!` panics (with a backtrace hint) when stdout is a pipe whose reader has
//! gone. The two usual cures: restore SIGPIPE's default disposition, or handle EPIPE. We
//! handle EPIPE, because SIGPIPE is process-wide: with its default disposition a reset
//! socket to etcd, S3 or a /metrics client (hyper writes with writev, which raises SIGPIPE)
//! would kill a backup or prune midway instead of giving an error to retry or report.
//!
//! So the macros below shadow std's `print!`, `println!`, `eprint!` and `eprintln!` for the
//! whole crate (textual macro scope: `main.rs` declares this module before `cmd`). A write
//! that fails is dropped and remembered; the command still finishes what it started (a
//! backup is not abandoned halfway because a reader left) and removes its scratch files;
//! then `main` ends the process by SIGPIPE, as `cat` ends, without a message (any other
//! write error, e.g. a full disk behind `> file`, is reported as an error).

use std::io::Write;
use std::sync::OnceLock;

/// The first error writing to stdout; later writes are skipped.
static STDOUT_ERROR: OnceLock<std::io::Error> = OnceLock::new();

/// Writes to stdout. An error (a closed pipe, or a full disk behind `> file`) is kept for
/// `main` to act on once the command has finished, and later output is dropped.
pub fn stdout_write(bytes: &[u8]) {
    if STDOUT_ERROR.get().is_some() {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) =
        out.write_all(bytes)
            .and_then(|()| if bytes.ends_with(b"\n") { out.flush() } else { Ok(()) })
    {
        let _ = STDOUT_ERROR.set(e);
    }
}

/// The first error writing to stdout so far: a command whose whole job is output (an
/// extraction) stops on it instead of rendering for nobody.
pub fn stdout_error() -> Option<&'static std::io::Error> {
    STDOUT_ERROR.get()
}

/// Flushes a partial last line; returns the first error writing to stdout, if any.
pub fn finish_stdout() -> Option<&'static std::io::Error> {
    if STDOUT_ERROR.get().is_none() {
        if let Err(e) = std::io::stdout().lock().flush() {
            let _ = STDOUT_ERROR.set(e);
        }
    }
    STDOUT_ERROR.get()
}

/// Set by a command whose `-w json` result is one object at the end: its text lines (plans,
/// progress) go to stderr, so stdout holds only the JSON.
static TEXT_TO_STDERR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on `print!`/`println!` write to stderr; `print_json` (args.rs) still writes
/// to stdout.
pub fn text_to_stderr() {
    TEXT_TO_STDERR.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// `print!`/`println!`.
pub fn print_stdout(args: std::fmt::Arguments<'_>) {
    if TEXT_TO_STDERR.load(std::sync::atomic::Ordering::Relaxed) {
        return print_stderr(args);
    }
    match args.as_str() {
        Some(s) => stdout_write(s.as_bytes()),
        None => stdout_write(std::fmt::format(args).as_bytes()),
    }
}

/// `eprint!`/`eprintln!`: errors writing to stderr are ignored; there is nowhere left to
/// report them.
pub fn print_stderr(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// Ends the process the way a Unix filter ends when its reader goes away: killed by SIGPIPE
/// (the shell shows 141 and prints nothing).
pub fn exit_by_sigpipe() -> ! {
    // SAFETY: resetting one signal's disposition and raising it; no memory is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}

#[allow(unused_macros)]
macro_rules! print {
    ($($arg:tt)*) => { $crate::output::print_stdout(format_args!($($arg)*)) };
}

macro_rules! println {
    () => { $crate::output::print_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::print_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

#[allow(unused_macros)]
macro_rules! eprint {
    ($($arg:tt)*) => { $crate::output::print_stderr(format_args!($($arg)*)) };
}

macro_rules! eprintln {
    () => { $crate::output::print_stderr(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::print_stderr(format_args!("{}\n", format_args!($($arg)*))) };
}
