//! `etcdguard pki check`: the certificates of a node's PKI directory and when they expire.
//! Scanning and judging are `etcdguard_node::pki::check`; this module prints and picks the
//! exit code.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use etcdguard_node::pki::{self, PkiError, Status};
use etcdguard_repo::retention::parse_duration;

use crate::args::TableJson;
use crate::cmd::table;
use crate::exit::{Code, Failure};

#[derive(Subcommand)]
pub enum PkiCommand {
    /// Check when the node's certificates expire; exit 18 if one has expired or soon will.
    ///
    /// Reads every certificate under --pki-dir, recursively and whatever the file is called
    /// (PEM files with one or more CERTIFICATE blocks; a .crt/.cer/.der may also be DER).
    /// Keys, CSRs and other files are skipped. For kubeadm's /etc/kubernetes/pki that is the
    /// cluster CA, the API server's serving and client certificates, front-proxy and etcd's
    /// own CA, server, peer and client certificates: what `kubeadm certs check-expiration`
    /// looks at, minus the kubeconfig files, and it works on any layout (OpenShift's
    /// static-pod-resources, a hand-made etcd PKI).
    ///
    /// Prints each certificate's path (path#N for the N+1th of a bundle), subject, notAfter,
    /// days left and status: valid, expiring (notAfter within --warn), expired, or not yet
    /// valid (notBefore ahead: check the node's clock).
    ///
    /// Exit codes: 0 all certificates valid beyond --warn; 18 one or more expired, expiring
    /// or not yet valid; 1 a file that should hold a certificate could not be read or parsed
    /// (listed under "problems"); 3 no such directory, or no certificate in it.
    ///
    /// Examples:
    ///   etcdguard pki check
    ///   etcdguard pki check --pki-dir /etc/kubernetes/static-pod-resources --warn 60d -w json
    #[command(verbatim_doc_comment)]
    Check(CheckArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// Directory to scan (recursively).
    #[arg(long, value_name = "DIR", default_value = "/etc/kubernetes/pki")]
    pub pki_dir: PathBuf,
    /// Warn about certificates that expire within this long (e.g. 30d, 2w, 90d).
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_duration)]
    pub warn: Duration,
    /// Output: a table, or JSON (every field of each certificate, its status and seconds left).
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TableJson::Table)]
    pub write_out: TableJson,
}

pub fn run(cmd: PkiCommand) -> Result<()> {
    match cmd {
        PkiCommand::Check(a) => check(a),
    }
}

fn check(args: CheckArgs) -> Result<()> {
    let report = pki::check(&args.pki_dir, chrono::Utc::now(), args.warn).map_err(|e| {
        let code = match e {
            PkiError::NotFound(_) => Code::NotFound,
            PkiError::PermissionDenied(_) => Code::PermissionDenied,
            PkiError::NotADirectory(_) => Code::Usage,
            PkiError::Io(..) => Code::Failure,
        };
        Failure::new(code, e.to_string())
    })?;
    match args.write_out {
        TableJson::Json => crate::args::print_json(&report)?,
        TableJson::Table => {
            let mut rows =
                vec![["PATH", "SUBJECT", "NOT AFTER (UTC)", "DAYS LEFT", "CA", "STATUS"]
                    .map(String::from)
                    .to_vec()];
            for c in &report.certificates {
                rows.push(vec![
                    c.certificate.display_name(),
                    c.certificate.subject.clone(),
                    c.certificate.not_after.format("%Y-%m-%d %H:%M:%S").to_string(),
                    // Whole days, rounded down: 0 means less than a day is left.
                    c.seconds_left.div_euclid(86400).to_string(),
                    if c.certificate.is_ca { "yes" } else { "no" }.to_string(),
                    c.status.as_str().to_string(),
                ]);
            }
            print!("{}", table(&rows));
            if !report.problems.is_empty() {
                println!("\nproblems:");
                for p in &report.problems {
                    println!("  {}: {}", p.path, p.message);
                }
            }
        }
    }
    let count = |s: Status| report.findings.iter().filter(|f| f.status == s).count();
    if !report.findings.is_empty() {
        let mut parts = Vec::new();
        for (s, what) in [
            (Status::Expired, "expired"),
            (Status::Expiring, "expiring within --warn"),
            (Status::NotYetValid, "not yet valid"),
        ] {
            if count(s) > 0 {
                parts.push(format!("{} {what}", count(s)));
            }
        }
        let clock = if count(Status::NotYetValid) > 0 {
            "; for \"not yet valid\" check the node's clock"
        } else {
            ""
        };
        return Err(Failure::new(
            Code::CertificateExpiry,
            format!(
                "{} of {} certificates need attention ({}); renew them (kubeadm: `kubeadm certs renew`){clock}",
                report.findings.len(),
                report.certificates.len(),
                parts.join(", ")
            ),
        )
        .into());
    }
    if !report.problems.is_empty() {
        return Err(Failure::new(
            Code::Failure,
            format!(
                "{} file(s) under {} could not be read as certificates (listed above)",
                report.problems.len(),
                report.pki_dir
            ),
        )
        .into());
    }
    if report.certificates.is_empty() {
        return Err(Failure::new(
            Code::NotFound,
            format!(
                "no certificate under {}; is it the PKI directory? (kubeadm: /etc/kubernetes/pki)",
                report.pki_dir
            ),
        )
        .into());
    }
    Ok(())
}
