//! `etcdguard snapshot save FILE`: a snapshot of a live member over the v3 gRPC API.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use etcdguard_client::{choose_member, ClientError, Destination, Progress, SnapshotFrom};
use etcdguard_storage::status::humanize_bytes;
use etcdguard_storage::Format;

use crate::args::{client_failure, ConnArgs};
use crate::exit::{Code, Failure};

#[derive(Args)]
pub struct SaveArgs {
    /// Where to write the snapshot (`FILE.part` first, renamed when complete and verified);
    /// `-` writes it to stdout.
    pub file: PathBuf,
    /// Which member to take the snapshot from: `follower` (a healthy follower with the
    /// highest applied raft index, sparing the leader; the leader if there is none),
    /// `leader`, or one of the endpoints.
    #[arg(long, value_name = "follower|leader|ENDPOINT", default_value = "follower")]
    pub snapshot_from: SnapshotFrom,
    /// Do not print the saved file's status (hash, revision, total keys, total size).
    #[arg(long)]
    pub skip_status: bool,
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
struct Bar(Option<indicatif::ProgressBar>);

impl Progress for Bar {
    fn begin(&mut self, total: u64) {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(total),
                indicatif::ProgressDrawTarget::stderr_with_hz(5),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style);
            }
            self.0 = Some(bar);
        }
    }
    fn advance(&mut self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.inc(bytes);
        }
    }
    fn end(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.abandon();
        }
    }
}

pub fn run(args: SaveArgs) -> Result<()> {
    let dest = Destination::parse(&args.file);
    if matches!(dest, Destination::Stdout) && std::io::stdout().is_terminal() {
        return Err(Failure::new(Code::Usage, "refusing to write a binary snapshot to a terminal; redirect stdout (etcdguard snapshot save - > FILE)").into());
    }
    dest.preflight().map_err(client_failure)?;
    let session = args.conn.session()?;

    let probes = session.probe_all();
    let choice = choose_member(&probes, &args.snapshot_from).map_err(client_failure)?;
    let st = &choice.status;
    eprintln!(
        "snapshot from {} (member {:x}, {}, revision {}, applied index {}, db {}): {}",
        st.endpoint,
        st.member_id,
        st.role(),
        st.revision,
        st.applied(),
        humanize_bytes(st.db_size.max(0) as u64),
        choice.reason
    );

    let started = Instant::now();
    let summary = match session.save(&st.endpoint, &dest, &mut Bar(None)) {
        // `snapshot save - | …` whose reader went away: end quietly, as `cat` would.
        Err(ClientError::Write { target, source })
            if matches!(dest, Destination::Stdout)
                && target == "stdout"
                && source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            crate::output::exit_by_sigpipe()
        }
        other => other.map_err(client_failure)?,
    };
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    eprintln!(
        "received {} in {:.1}s ({}/s); server sha256 trailer verified ({}…)",
        humanize_bytes(summary.bytes),
        secs,
        humanize_bytes((summary.bytes as f64 / secs) as u64),
        summary.sha256.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>()
    );
    if !summary.server_version.is_empty() {
        eprintln!("server storage version {}", summary.server_version);
    }

    let Destination::File(path) = &dest else { return Ok(()) };
    if args.out.json() {
        let status = if args.skip_status { None } else { Some(file_status_json(path)?) };
        return crate::args::print_json(&serde_json::json!({
            "file": path, "size": summary.bytes,
            "sha256": summary.sha256.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "endpoint": st.endpoint, "memberID": format!("{:x}", st.member_id),
            "serverVersion": summary.server_version, "status": status,
        }));
    }
    // The line etcdctl prints, then etcdguard's own reading of the file.
    println!("Snapshot saved at {}", path.display());
    if !args.skip_status {
        print!("{}", file_status(path, Format::Simple)?);
    }
    Ok(())
}

/// The file's status as `snapshot status -w json` prints it.
fn file_status_json(path: &Path) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&file_status(path, Format::Json)?)?)
}

/// `etcdguard snapshot status FILE` in `format`, as the release that wrote the file just
/// written prints it (a live 3.6 cluster's file prints 3.6's five columns).
fn file_status(path: &Path, format: Format) -> Result<String> {
    let file = etcdguard_workflow::snapshot::open_snapshot(path)?;
    let db = file.db().map_err(|e| etcdguard_workflow::error::db_error(path, e))?;
    let release = || file.release_resident();
    let (as_of, _) = etcdguard_storage::Provenance::read(&db).writer();
    let status = etcdguard_storage::status_as(&db, as_of, Some(&release)).map_err(|e| {
        Failure::new(
            Code::Corrupt,
            format!("{}: saved, but its status cannot be read: {e}", path.display()),
        )
    })?;
    Ok(status.render(format))
}
