//! `snapshot save` and `cluster health` over TLS with client-certificate auth, against etcd
//! started with a CA and certificates made in the test. Every bad credential gives a clear
//! TLS error, exit code 13, and no file.

mod live_support;

use etcdguard_testkit::EtcdVersion;
use live_support::*;

fn save(args: &[String], dest: &std::path::Path) -> std::process::Output {
    etcdguard().args(["snapshot", "save"]).arg(dest).args(args).output().unwrap()
}

fn tls_save_equals_etcdctl(version: EtcdVersion) {
    let pki = Pki::new();
    let server = pki.server(version);
    assert!(server.endpoint().starts_with("https://"));
    server.put(b"/registry/secrets/default/token", b"k8s\0not-a-real-secret");
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.db");
    let theirs = dir.path().join("theirs.db");
    let out = save(&pki.args(server.endpoint()), &ours);
    expect_code(&out, 0, "TLS save");
    server.snapshot_save(&theirs); // real etcdctl with the same client certificate
    assert!(
        std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
        "TLS snapshot differs from etcdctl's"
    );

    let out =
        etcdguard().args(["cluster", "health"]).args(pki.args(server.endpoint())).output().unwrap();
    expect_code(&out, 0, "cluster health over TLS");
    assert!(text(&out.stdout).contains("is healthy"), "{}", text(&out.stdout));
}

#[test]
fn tls_save_equals_etcdctl_3_4() {
    tls_save_equals_etcdctl(EtcdVersion::V3_4);
}

#[test]
fn tls_save_equals_etcdctl_3_5() {
    tls_save_equals_etcdctl(EtcdVersion::V3_5);
}

#[test]
fn bad_credentials_give_clear_errors_and_no_file() {
    let pki = Pki::new();
    let server = pki.server(EtcdVersion::V3_5);
    let ep = server.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("snap.db");

    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "wrong CA",
            pki.args_with(ep, &pki.other_ca, &pki.client_cert, &pki.client_key),
            "not issued by",
        ),
        (
            "expired client certificate",
            pki.args_with(ep, &pki.ca, &pki.expired_cert, &pki.expired_key),
            "rejected the client certificate",
        ),
        (
            "key of another certificate",
            pki.args_with(ep, &pki.ca, &pki.client_cert, &pki.wrong_key),
            "--key does not belong to --cert",
        ),
        (
            "no client certificate",
            vec!["--endpoints".into(), ep.into(), "--cacert".into(), pki.ca.display().to_string()],
            "requires a client certificate",
        ),
    ];
    for (what, args, needle) in cases {
        let out = save(&args, &dest);
        expect_code(&out, 13, what);
        let stderr = text(&out.stderr);
        eprintln!("{what}: {}", stderr.trim());
        assert!(
            stderr.contains("TLS failure") && stderr.contains(needle),
            "{what}: unclear message: {stderr}"
        );
        assert_no_file(&dest);
    }

    // A TLS file that does not exist: named, exit 3.
    let missing = dir.path().join("nope.crt");
    let out = save(&pki.args_with(ep, &missing, &pki.client_cert, &pki.client_key), &dest);
    expect_code(&out, 3, "missing CA file");
    assert!(text(&out.stderr).contains("--cacert"), "{}", text(&out.stderr));
    assert_no_file(&dest);
}
