//! The master key of an encrypted repository wrapped by AWS KMS (moto's KMS on loopback,
//! checking credentials and request signatures; stopped by PID): add the key with the
//! passphrase, then unlock with the KMS key alone; the passphrase key can go; a wrong
//! credential, another KMS key or a disabled one unlock nothing.

mod backup_support;

use std::process::Command;

use backup_support::*;

struct Kms {
    moto: Moto,
    access_key: String,
    secret_key: String,
    key_id: String,
    other_key_id: String,
}

/// moto with one IAM user allowed to use KMS, and two KMS keys (the first as alias/etcd-backups).
fn kms() -> Kms {
    let moto = Moto::start_with_auth_after(3);
    let script = format!(
        "import boto3, json\n\
         ep = '{}'\n\
         iam = boto3.client('iam', endpoint_url=ep, region_name='us-east-1', aws_access_key_id='setup', aws_secret_access_key='setup')\n\
         iam.create_user(UserName='backup')\n\
         iam.put_user_policy(UserName='backup', PolicyName='kms', PolicyDocument=json.dumps({{'Version': '2012-10-17', \
         'Statement': [{{'Effect': 'Allow', 'Action': ['kms:*'], 'Resource': '*'}}]}}))\n\
         k = iam.create_access_key(UserName='backup')['AccessKey']\n\
         kms = boto3.client('kms', endpoint_url=ep, region_name='us-east-1', aws_access_key_id=k['AccessKeyId'], aws_secret_access_key=k['SecretAccessKey'])\n\
         key = kms.create_key()['KeyMetadata']['KeyId']\n\
         kms.create_alias(AliasName='alias/etcd-backups', TargetKeyId=key)\n\
         other = kms.create_key()['KeyMetadata']['KeyId']\n\
         print(k['AccessKeyId'], k['SecretAccessKey'], key, other)\n",
        moto.endpoint
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = text.split_whitespace().collect();
    Kms {
        access_key: f[0].into(),
        secret_key: f[1].into(),
        key_id: f[2].into(),
        other_key_id: f[3].into(),
        moto,
    }
}

impl Kms {
    fn spec(&self, key: &str) -> String {
        format!("aws-kms:{key}?region=us-east-1&endpoint={}", self.moto.endpoint)
    }

    fn cmd(&self) -> Command {
        let mut c = etcdguard();
        c.env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL_KMS")
            .env_remove("ETCDGUARD_KMS_KEY");
        c
    }
}

#[test]
fn a_kms_wrapped_key_unlocks_the_repository_without_the_passphrase() {
    let snaps = snapshots();
    let kms = kms();
    let work = scratch("kms");
    let repo = work.join("repo").to_str().unwrap().to_string();
    let alias = kms.spec("alias/etcd-backups");
    let id = created_id(&ok_with(
        kms.cmd().env("ETCDGUARD_PASSPHRASE", "first pass"),
        &["backup", "create", "--repo", &repo, "--from-file", snaps.first.to_str().unwrap()],
    ));

    // Without the passphrase no key can be added.
    fails_with(
        &mut kms.cmd(),
        &["backup", "key", "add", "--repo", &repo, "--new-kms-key", &alias],
        16,
    );
    let out = ok_with(
        kms.cmd().env("ETCDGUARD_PASSPHRASE", "first pass"),
        &["backup", "key", "add", "--repo", &repo, "--new-kms-key", &alias],
    );
    assert!(out.starts_with("Added key "), "{out}");
    let kms_key_id = out.split_whitespace().nth(2).unwrap().to_string();
    let file = std::fs::read_to_string(work.join(format!("repo/keys/{kms_key_id}.json"))).unwrap();
    assert!(
        file.contains("\"kdf\": \"kms\"")
            && file.contains("\"kms\": \"aws-kms:alias/etcd-backups\""),
        "{file}"
    );

    // The KMS key alone opens it (through the environment variable too).
    let restored = work.join("r.db");
    ok_with(
        &mut kms.cmd(),
        &[
            "backup",
            "restore",
            &id,
            "--repo",
            &repo,
            "--kms-key",
            &alias,
            "--to-file",
            restored.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(&snaps.first).unwrap());
    ok_with(
        kms.cmd().env("ETCDGUARD_KMS_KEY", &alias),
        &["backup", "verify", &id, "--repo", &repo, "--scratch-dir", work.to_str().unwrap()],
    );
    // So the passphrase key can go: a KMS-only repository that takes new backups.
    let keys: serde_json::Value = serde_json::from_str(&ok_with(
        &mut kms.cmd(),
        &["backup", "key", "list", "--repo", &repo, "-w", "json"],
    ))
    .unwrap();
    let pass_key = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .find(|k| *k != kms_key_id)
        .unwrap()
        .to_string();
    ok_with(
        &mut kms.cmd(),
        &["backup", "key", "remove", &pass_key, "--repo", &repo, "--kms-key", &alias],
    );
    let err = fails_with(
        kms.cmd().env("ETCDGUARD_PASSPHRASE", "first pass"),
        &["backup", "verify", &id, "--repo", &repo],
        16,
    );
    assert!(err.contains("wrong passphrase"), "{err}");
    created_id(&ok_with(
        &mut kms.cmd(),
        &[
            "backup",
            "create",
            "--repo",
            &repo,
            "--kms-key",
            &alias,
            "--from-file",
            snaps.second.to_str().unwrap(),
        ],
    ));

    // A copy out of the KMS-only repository into a new one that gets the KMS key too.
    let copy = work.join("copy").to_str().unwrap().to_string();
    ok_with(
        kms.cmd().env("ETCDGUARD_TO_PASSPHRASE", "copy pass"),
        &[
            "backup",
            "copy",
            "--from",
            &repo,
            "--kms-key",
            &alias,
            "--to",
            &copy,
            "--to-kms-key",
            &alias,
        ],
    );
    ok_with(
        &mut kms.cmd(),
        &[
            "backup",
            "verify",
            &id,
            "--repo",
            &copy,
            "--kms-key",
            &alias,
            "--scratch-dir",
            work.to_str().unwrap(),
        ],
    );

    // The key by its id works as by its alias only when it is the name the file records.
    let by_id = kms.spec(&kms.key_id);
    let err = fails_with(
        &mut kms.cmd(),
        &["backup", "verify", &id, "--repo", &repo, "--kms-key", &by_id],
        16,
    );
    assert!(err.contains("no key file is wrapped by"), "{err}");
    // Another KMS key or wrong credentials: nothing opens. (moto's Decrypt ignores a key's
    // disabled state, so revoking a key is not tested here.)
    let other = kms.spec(&kms.other_key_id);
    fails_with(
        &mut kms.cmd(),
        &["backup", "verify", &id, "--repo", &repo, "--kms-key", &other],
        16,
    );
    let err = fails_with(
        kms.cmd().env("AWS_SECRET_ACCESS_KEY", "wrong"),
        &["backup", "verify", &id, "--repo", &repo, "--kms-key", &alias],
        13,
    );
    assert!(err.contains("SignatureDoesNotMatch") || err.contains("access denied"), "{err}");
    // A new repository: never created plain because only a KMS key was given; with a
    // passphrase it gets both keys at once.
    let fresh = work.join("fresh").to_str().unwrap().to_string();
    let err = fails_with(
        &mut kms.cmd(),
        &[
            "backup",
            "create",
            "--repo",
            &fresh,
            "--kms-key",
            &alias,
            "--from-file",
            snaps.first.to_str().unwrap(),
        ],
        2,
    );
    assert!(err.contains("passphrase"), "{err}");
    assert!(!work.join("fresh/config").exists());
    ok_with(
        kms.cmd().env("ETCDGUARD_PASSPHRASE", "p"),
        &[
            "backup",
            "create",
            "--repo",
            &fresh,
            "--kms-key",
            &alias,
            "--from-file",
            snaps.first.to_str().unwrap(),
        ],
    );
    let keys = ok_with(&mut kms.cmd(), &["backup", "key", "list", "--repo", &fresh]);
    assert!(keys.contains("aws-kms:alias/etcd-backups"), "{keys}");
    ok_with(&mut kms.cmd(), &["backup", "verify", "latest", "--repo", &fresh, "--kms-key", &alias]);
    // Bad specs are usage errors.
    let err = fails_with(
        &mut kms.cmd(),
        &["backup", "verify", &id, "--repo", &repo, "--kms-key", "vault:transit/x"],
        2,
    );
    assert!(err.contains("aws-kms:"), "{err}");
}
