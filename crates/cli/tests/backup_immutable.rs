//! A repository in an S3 bucket with Object Lock (a default COMPLIANCE retention), on a real
//! S3-compatible server (moto, loopback, stopped by PID): backups are written with
//! credentials that cannot delete (a proxy refuses every DELETE); neither a prune nor anyone
//! with the S3 API (boto3) destroys a backup inside its retention, and what a prune hid
//! comes back when its delete markers are removed.

mod backup_support;

use std::process::Command;

use backup_support::*;

fn cmd() -> Command {
    let mut c = etcdguard();
    s3_env(&mut c).env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

/// Runs a boto3 script against moto (`s3` is a client of it); returns its stdout.
fn boto3(moto: &Moto, script: &str) -> String {
    let prelude = format!(
        "import boto3, json, sys\ns3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
         aws_access_key_id='testing', aws_secret_access_key='testing-secret')\n",
        moto.endpoint
    );
    let out = Command::new("python3")
        .args(["-c", &format!("{prelude}{script}")])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("python3 with boto3");
    assert!(
        out.status.success(),
        "boto3 script failed:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn object_lock_keeps_backups_from_prune_and_from_deletes_through_the_s3_api() {
    let snaps = snapshots();
    let moto = Moto::start();
    boto3(
        &moto,
        "s3.create_bucket(Bucket='etcd-locked', ObjectLockEnabledForBucket=True)\n\
         s3.put_object_lock_configuration(Bucket='etcd-locked', ObjectLockConfiguration={'ObjectLockEnabled': 'Enabled', \
         'Rule': {'DefaultRetention': {'Mode': 'COMPLIANCE', 'Days': 1}}})\n",
    );
    let work = scratch("immutable");
    let writer_proxy = DenyDeleteProxy::start(moto.port);
    // The backup writer's view: no delete permission. The privileged one (prune) goes direct.
    let writer = format!(
        "s3://etcd-locked/etcd?endpoint=http://127.0.0.1:{}&checksum=sha256",
        writer_proxy.port
    );
    let admin = format!("s3://etcd-locked/etcd?endpoint={}&checksum=sha256", moto.endpoint);

    // Without a checksum the bucket refuses every upload: a clear error, nothing listed.
    let plain = format!("s3://etcd-locked/etcd?endpoint=http://127.0.0.1:{}", writer_proxy.port);
    let out = run(cmd().args([
        "backup",
        "create",
        "--repo",
        &plain,
        "--from-file",
        snaps.first.to_str().unwrap(),
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Error:") && err.contains("checksum=sha256"),
        "{err}"
    );

    let first = created_id(&ok_with(
        &mut cmd(),
        &["backup", "create", "--repo", &writer, "--from-file", snaps.first.to_str().unwrap()],
    ));
    let second = created_id(&ok_with(
        &mut cmd(),
        &["backup", "create", "--repo", &writer, "--from-file", snaps.second.to_str().unwrap()],
    ));
    assert!(
        writer_proxy.denied() >= 2,
        "the creates deleted nothing (their locks): {}",
        writer_proxy.denied()
    );
    // Their locks, which they could not delete, were released by rewriting them expired (a
    // prune from any host runs at once instead of finding the repository busy).
    let out = boto3(
        &moto,
        "import datetime\n\
         now = datetime.datetime.now(datetime.timezone.utc)\n\
         locks = s3.list_objects_v2(Bucket='etcd-locked', Prefix='etcd/locks/').get('Contents', [])\n\
         live = 0\n\
         for o in locks:\n\
         \x20   info = json.loads(s3.get_object(Bucket='etcd-locked', Key=o['Key'])['Body'].read())\n\
         \x20   if datetime.datetime.fromisoformat(info['expires'].replace('Z', '+00:00')) > now:\n\
         \x20       live += 1\n\
         print(len(locks), live)\n",
    );
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["2", "0"],
        "lock objects, live ones: {out}"
    );
    let out = ok_with(&mut cmd(), &["backup", "prune", "--repo", &admin, "--keep-last", "1"]);
    assert!(out.contains("1 backup(s) removed"), "{out}");
    let list: serde_json::Value = serde_json::from_str(&ok_with(
        &mut cmd(),
        &["backup", "list", "--repo", &admin, "-w", "json"],
    ))
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], second.as_str());

    // The prune only hid the first backup: every version is still stored, and nobody (with
    // any permission) can delete one before its retention ends.
    let manifest = format!("etcd/backups/{first}.json");
    let out = boto3(
        &moto,
        &format!(
            "v = s3.list_object_versions(Bucket='etcd-locked', Prefix='etcd/')\n\
             versions = [x for x in v.get('Versions', []) if x['Key'] == '{manifest}']\n\
             markers = [x for x in v.get('DeleteMarkers', [])]\n\
             print(len(versions), len(markers))\n\
             denied = 0\n\
             for x in v.get('Versions', []):\n\
             \x20   if x['Key'] == '{manifest}' or x['Key'].startswith('etcd/packs/'):\n\
             \x20       try:\n\
             \x20           s3.delete_object(Bucket='etcd-locked', Key=x['Key'], VersionId=x['VersionId'])\n\
             \x20       except Exception as e:\n\
             \x20           assert 'AccessDenied' in str(e), e\n\
             \x20           denied += 1\n\
             print(denied)\n"
        ),
    );
    let mut numbers = out.split_whitespace().map(|n| n.parse::<usize>().unwrap());
    let (versions, markers, denied) =
        (numbers.next().unwrap(), numbers.next().unwrap(), numbers.next().unwrap());
    assert_eq!(versions, 1, "{out}");
    assert!(markers >= 1, "the prune deleted nothing: {out}");
    assert!(denied >= 2, "{out}");

    // Recovery: remove the delete markers; the first backup is back, whole.
    boto3(
        &moto,
        "v = s3.list_object_versions(Bucket='etcd-locked', Prefix='etcd/')\n\
         for m in v.get('DeleteMarkers', []):\n\
         \x20   s3.delete_object(Bucket='etcd-locked', Key=m['Key'], VersionId=m['VersionId'])\n",
    );
    let restored = work.join("first.db");
    ok_with(
        &mut cmd(),
        &["backup", "restore", &first, "--repo", &writer, "--to-file", restored.to_str().unwrap()],
    );
    assert!(
        std::fs::read(&restored).unwrap() == std::fs::read(&snaps.first).unwrap(),
        "the recovered backup differs"
    );
    ok_with(
        &mut cmd(),
        &["backup", "verify", &first, "--repo", &admin, "--scratch-dir", work.to_str().unwrap()],
    );
}

#[test]
fn server_side_encryption_options_reach_every_upload() {
    let snaps = snapshots();
    let moto = Moto::start();
    moto.create_bucket("etcd-sse");
    let repo = format!(
        "s3://etcd-sse/etcd?endpoint={}&sse=aws:kms&sse-kms-key-id=alias/etcd-backups",
        moto.endpoint
    );
    created_id(&ok_with(
        &mut cmd(),
        &["backup", "create", "--repo", &repo, "--from-file", snaps.first.to_str().unwrap()],
    ));
    let out = boto3(
        &moto,
        "keys = [o['Key'] for o in s3.list_objects_v2(Bucket='etcd-sse', Prefix='etcd/')['Contents']]\n\
         kinds = set()\n\
         for k in keys:\n\
         \x20   h = s3.head_object(Bucket='etcd-sse', Key=k)\n\
         \x20   kinds.add((h.get('ServerSideEncryption'), h.get('SSEKMSKeyId', '').split('/')[-1]))\n\
         print(len(keys), sorted(kinds))\n",
    );
    assert!(
        out.contains("[('aws:kms', 'etcd-backups')]"),
        "every object SSE-KMS with the key given: {out}"
    );
    for (bad, why) in [
        ("sse=bogus", "sse must be"),
        ("sse-kms-key-id=k", "needs sse=aws:kms"),
        ("sse=AES256&sse-kms-key-id=k", "needs sse=aws:kms"),
    ] {
        let url = format!("s3://etcd-sse/etcd?endpoint={}&{bad}", moto.endpoint);
        let err = fails_with(&mut cmd(), &["backup", "list", "--repo", &url], 2);
        assert!(err.contains(why), "{bad}: {err}");
    }
    let err = fails_with(&mut cmd(), &["backup", "list", "--repo", "az://c/p?checksum=sha256"], 2);
    assert!(err.contains("s3://"), "{err}");
}
