//! Talking to a test kube-apiserver (testkit's `ApiServer`) as the admin, a node or a
//! bootstrap token would: kubectl with impersonation, so the server records that requestor
//! (a CSR's `spec.username`) and the Node authorizer judges a node's own writes.
#![allow(dead_code)]

use std::io::Write;
use std::process::Stdio;

use base64::Engine as _;
use etcdguard_testkit::apiserver::ApiServer;
use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::{json, Value};

use crate::live_support::text;

pub const CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const SERVING: &str = "kubernetes.io/kubelet-serving";

pub fn kubectl_stdin(api: &ApiServer, args: &[&str], input: &str) -> std::process::Output {
    let mut child = api
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

pub fn create(api: &ApiServer, obj: &Value, impersonate: &[&str]) {
    let mut args = vec!["create", "-f", "-"];
    args.extend_from_slice(impersonate);
    kubectl_stdin(api, &args, &obj.to_string());
}

pub fn get_json(api: &ApiServer, what: &[&str]) -> Value {
    let out =
        etcdguard_testkit::run_checked(api.kubectl().arg("get").args(what).args(["-o", "json"]));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// kubectl's flags to act as the kubelet of Node `name`.
pub fn node_user(name: &str) -> Vec<String> {
    vec![
        format!("--as=system:node:{name}"),
        "--as-group=system:nodes".into(),
        "--as-group=system:authenticated".into(),
    ]
}

/// Lets nodes and bootstrap tokens create CSRs, as kubeadm sets it up.
pub fn allow_csr_creation(api: &ApiServer) {
    create(
        api,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "test-csr-create"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node-bootstrapper"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"},
                         {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:bootstrappers"}]}),
        &[],
    );
}

/// A PKCS#10 request as a kubelet makes it: CN system:node:NAME, O system:nodes, `sans`.
pub fn csr_pem(cn: &str, sans: &[&str]) -> String {
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name.push(DnType::OrganizationName, "system:nodes");
    p.serialize_request(&KeyPair::generate().unwrap()).unwrap().pem().unwrap()
}

/// The CertificateSigningRequest object for `pem` to `signer`.
pub fn csr_object(name: &str, signer: &str, pem: &str) -> Value {
    let usages = if signer.ends_with("kubelet-serving") {
        json!(["digital signature", "server auth"])
    } else {
        json!(["digital signature", "client auth"])
    };
    json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem),
                 "signerName": signer, "usages": usages}})
}

pub fn submit_csr(api: &ApiServer, name: &str, signer: &str, pem: &str, as_user: &[&str]) {
    create(api, &csr_object(name, signer, pem), as_user);
}

/// Whether a CSR object carries the Approved condition.
pub fn is_approved(csr: &Value) -> bool {
    csr["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Approved" && c["status"] == "True"))
}
