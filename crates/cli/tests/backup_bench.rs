//! Bench, run by hand (ignored in the test suite): `backup create` to a local S3 server (moto)
//! against the manual pipeline of the runbooks (`zstd` + an S3 client upload of the whole
//! snapshot), over a series of snapshots of the same cluster.
//!
//!   ETCDGUARD_BENCH_SNAPSHOTS=/data/s0.db,/data/s1.db,… \
//!     cargo test --release -p etcdguard --test backup_bench -- --ignored --nocapture
//!
//! Take the snapshots with `etcdctl snapshot save` (or `etcdguard snapshot save`) between
//! rounds of churn. Without the variable, the small snapshots of the test fixture are used.
//! Prints per-snapshot times and stored sizes, the totals, and their ratios; checks that the
//! last backup restores byte-identical.

mod backup_support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use backup_support::*;

const UPLOAD: &str = r#"
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="testing",
                  aws_secret_access_key="testing", region_name="us-east-1")
s3.upload_file(sys.argv[2], sys.argv[3], sys.argv[4])
"#;

#[test]
#[ignore]
fn backup_create_vs_manual_pipeline() {
    let files: Vec<PathBuf> = match std::env::var("ETCDGUARD_BENCH_SNAPSHOTS") {
        Ok(v) => v.split(',').map(PathBuf::from).collect(),
        Err(_) => {
            let s = snapshots();
            vec![s.first.clone(), s.second.clone(), s.third.clone()]
        }
    };
    let moto = Moto::start();
    moto.create_bucket("bench-repo");
    moto.create_bucket("bench-manual");
    let work = scratch("bench");
    let repo = format!("s3://bench-repo/r?endpoint={}", moto.endpoint);
    let (mut t_ours, mut t_manual) = (Duration::ZERO, Duration::ZERO);
    let (mut s_ours, mut s_manual) = (0u64, 0u64);
    let mut last_id = String::new();
    println!(
        "{:<40} {:>12} {:>10} {:>14} {:>10} {:>14}",
        "snapshot", "size", "ours s", "ours stored", "manual s", "manual stored"
    );
    for (i, f) in files.iter().enumerate() {
        let size = std::fs::metadata(f).unwrap().len();
        let t = Instant::now();
        let out = run(s3_env(&mut etcdguard()).args([
            "backup",
            "create",
            "--repo",
            &repo,
            "--from-file",
            f.to_str().unwrap(),
            "-w",
            "json",
        ]));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let d_ours = t.elapsed();
        let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let added = m["sizes"]["added"].as_u64().unwrap();
        last_id = m["id"].as_str().unwrap().to_string();

        let t = Instant::now();
        let zst = work.join(format!("{i}.db.zst"));
        let z = run(std::process::Command::new("zstd")
            .args(["-q", "-f", "-3", "-T0"])
            .arg(f)
            .arg("-o")
            .arg(&zst));
        assert!(z.status.success(), "{}", String::from_utf8_lossy(&z.stderr));
        let up = run(std::process::Command::new("python3").args([
            "-c",
            UPLOAD,
            &moto.endpoint,
            zst.to_str().unwrap(),
            "bench-manual",
            &format!("{i}.db.zst"),
        ]));
        assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
        let d_manual = t.elapsed();
        let zsize = std::fs::metadata(&zst).unwrap().len();
        std::fs::remove_file(&zst).unwrap();

        println!(
            "{:<40} {:>12} {:>10.2} {:>14} {:>10.2} {:>14}",
            f.file_name().unwrap().to_string_lossy(),
            size,
            d_ours.as_secs_f64(),
            added,
            d_manual.as_secs_f64(),
            zsize
        );
        t_ours += d_ours;
        t_manual += d_manual;
        s_ours += added;
        s_manual += zsize;
    }
    println!(
        "total: ours {:.1}s {} bytes; manual {:.1}s {} bytes; time ratio {:.2}, stored ratio {:.3}",
        t_ours.as_secs_f64(),
        s_ours,
        t_manual.as_secs_f64(),
        s_manual,
        t_ours.as_secs_f64() / t_manual.as_secs_f64(),
        s_ours as f64 / s_manual as f64
    );
    let dest = work.join("last.db");
    let t = Instant::now();
    let out = run(s3_env(&mut etcdguard()).args([
        "backup",
        "restore",
        &last_id,
        "--repo",
        &repo,
        "--to-file",
        dest.to_str().unwrap(),
    ]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    println!("restore of the last backup: {:.1}s", t.elapsed().as_secs_f64());
    assert!(
        std::fs::read(&dest).unwrap() == std::fs::read(files.last().unwrap()).unwrap(),
        "restore not byte-identical"
    );
}
