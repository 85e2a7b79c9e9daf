//! The parallel restore and the pipelined create: a pack damaged in the repository stops a
//! `--parallel` restore into a data dir with the usual error and leaves nothing behind; the
//! same backup restores byte for byte whatever `--parallel`; `--limit-rate` holds a create
//! to its rate; `--compression-level` changes the stored size, not the restored bytes.

mod backup_support;

use std::path::Path;

use backup_support::*;

#[test]
fn parallel_restore_round_trips_and_a_damaged_pack_leaves_no_data_dir() {
    let snaps = snapshots();
    let work = scratch("pipeline");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let id = create_from_file(repo_s, &snaps.second, &["--parallel", "3"]);
    let original = std::fs::read(&snaps.second).unwrap();
    for parallel in ["1", "2", "8"] {
        let dest = work.join(format!("out-{parallel}.db"));
        ok(&restore_args(&id, repo_s, &dest, &["--parallel", parallel]));
        assert!(
            std::fs::read(&dest).unwrap() == original,
            "--parallel {parallel}: the restored file differs"
        );
    }
    // A data dir whose parent does not exist yet is made, as `snapshot restore` (and etcdutl) do.
    let data = work.join("new-parent/data");
    ok(&[
        "backup",
        "restore",
        &id,
        "--repo",
        repo_s,
        "--data-dir",
        data.to_str().unwrap(),
        "--parallel",
        "4",
    ]);
    assert!(data.join("member/snap/db").is_file());

    // Damage the last pack of the snapshot (fetched after others are already written).
    let mut packs = pack_files(&repo);
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    let pack =
        packs.iter().rev().find(|p| std::fs::metadata(p).unwrap().len() > 4096).unwrap().clone();
    flip_byte(&pack, |n| n / 2, 0x5a);

    let target = work.join("restore-here");
    let err = fails(
        &[
            "backup",
            "restore",
            &id,
            "--repo",
            repo_s,
            "--data-dir",
            target.to_str().unwrap(),
            "--parallel",
            "4",
        ],
        10,
    );
    let name = pack.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.contains("damaged") && err.contains(&name[..16]), "{err}");
    assert!(!target.exists(), "a failed restore left {}", target.display());
    assert_no_temporaries(&work);
}

#[test]
fn limit_rate_holds_a_create_to_its_rate() {
    let snaps = snapshots();
    let work = scratch("limit-rate");
    let size = std::fs::metadata(&snaps.first).unwrap().len();
    // About 1.5 s at the rate (a quarter second of burst), whatever the machine's speed.
    let rate = (size as f64 / 1.5) as u64;
    let started = std::time::Instant::now();
    ok(&create_args(
        work.join("repo").to_str().unwrap(),
        &snaps.first,
        &["--limit-rate", &rate.to_string()],
    ));
    let took = started.elapsed().as_secs_f64();
    assert!(took >= 1.1, "{size} bytes at {rate} B/s took {took:.2} s");
    let err = fails(
        &create_args(work.join("repo2").to_str().unwrap(), &snaps.first, &["--limit-rate", "fast"]),
        2,
    );
    assert!(err.contains("not a rate"), "{err}");
}

/// `--compression-level` changes what a backup stores, not what it restores: level 19 stores
/// the same snapshot in fewer bytes than the repository's level, and both come back byte for
/// byte; a level zstd does not have is a usage error.
#[test]
fn compression_level_trades_size_and_restores_the_same() {
    let snaps = snapshots();
    let work = scratch("compression-level");
    let original = std::fs::read(&snaps.second).unwrap();
    let stored = |repo: &Path| {
        pack_files(repo).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum::<u64>()
    };
    let mut sizes = Vec::new();
    for level in [None, Some("19"), Some("-5")] {
        let repo = work.join(format!("repo{}", level.unwrap_or("")));
        let repo_s = repo.to_str().unwrap();
        let mut args = vec![
            "backup",
            "create",
            "--repo",
            repo_s,
            "--from-file",
            snaps.second.to_str().unwrap(),
        ];
        if let Some(l) = level {
            args.extend(["--compression-level", l]);
        }
        let id = created_id(&ok(&args));
        let dest = work.join(format!("out{}.db", level.unwrap_or("")));
        ok(&restore_args(&id, repo_s, &dest, &[]));
        assert!(
            std::fs::read(&dest).unwrap() == original,
            "level {level:?}: the restored file differs"
        );
        sizes.push(stored(&repo));
    }
    assert!(
        sizes[1] < sizes[0] && sizes[0] < sizes[2],
        "stored bytes at the default, 19 and -5: {sizes:?}"
    );
    for bad in ["0", "20", "-21", "max"] {
        let err = fails(
            &create_args(
                work.join("bad").to_str().unwrap(),
                &snaps.second,
                &["--compression-level", bad],
            ),
            2,
        );
        assert!(err.contains("zstd level"), "{bad}: {err}");
    }
}
