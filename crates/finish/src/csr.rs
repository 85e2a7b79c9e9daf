//! Which kubelet CSRs may be approved: a pure judgement over the request's facts.
//!
//! A kubelet asks for a client certificate (`kube-apiserver-client-kubelet`, CN
//! `system:node:NAME`, O `system:nodes`, no SANs) either with its current certificate (the
//! requestor is `system:node:NAME`) or, for its first one, with a bootstrap token (requestor
//! `system:bootstrap:…` in group `system:bootstrappers`), and for a serving certificate
//! (`kubelet-serving`) always as itself, with its host names and addresses as SANs. Anyone
//! else asking for a node's name is refused, and so is a node asking for another's.

use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::{CLIENT_SIGNER, SERVING_SIGNER};

/// What the API server recorded about a request.
pub struct CsrFacts<'a> {
    pub signer: &'a str,
    pub username: &'a str,
    pub groups: &'a [String],
    /// `spec.request`: the PEM-encoded PKCS#10 request.
    pub request_pem: &'a [u8],
}

pub struct Verdict {
    pub approve: bool,
    pub node: Option<String>,
    pub reason: String,
}

fn skip(node: Option<String>, reason: impl Into<String>) -> Verdict {
    Verdict { approve: false, node, reason: reason.into() }
}

struct Request {
    common_names: Vec<String>,
    organizations: Vec<String>,
    dns: Vec<String>,
    ips: Vec<String>,
    others: usize,
}

fn parse(pem: &[u8]) -> Result<Request, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not PEM: {e}"))?;
    if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
        return Err(format!("a PEM {} block, not a CERTIFICATE REQUEST", pem.label));
    }
    let (_, req) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| format!("not a PKCS#10 request: {e}"))?;
    let subject = &req.certification_request_info.subject;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue| {
        a.as_str().map(str::to_string).unwrap_or_else(|_| "<not a string>".into())
    };
    let mut r = Request {
        common_names: subject.iter_common_name().map(text).collect(),
        organizations: subject.iter_organization().map(text).collect(),
        dns: Vec::new(),
        ips: Vec::new(),
        others: 0,
    };
    if let Some(exts) = req.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => r.dns.push(d.to_string()),
                        GeneralName::IPAddress(b) => match b.len() {
                            4 => r
                                .ips
                                .push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string()),
                            16 => r
                                .ips
                                .push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string()),
                            _ => r.others += 1,
                        },
                        _ => r.others += 1,
                    }
                }
            }
        }
    }
    Ok(r)
}

/// Judges one pending request. `node_addresses(name)` is the Node's addresses when that Node
/// exists; `hosts` are the control-plane hosts the caller named (a bootstrap client request
/// for one of them may come before its Node).
pub fn review(
    facts: &CsrFacts<'_>,
    node_addresses: impl Fn(&str) -> Option<Vec<String>>,
    hosts: &[String],
) -> Verdict {
    let req = match parse(facts.request_pem) {
        Ok(r) => r,
        Err(e) => return skip(None, format!("the request cannot be read ({e})")),
    };
    let [cn] = req.common_names.as_slice() else {
        return skip(
            None,
            format!("the request has {} common names, not one", req.common_names.len()),
        );
    };
    let Some(name) = cn.strip_prefix("system:node:").filter(|n| !n.is_empty()) else {
        return skip(None, format!("CN {cn} is not system:node:NAME"));
    };
    let node = Some(name.to_string());
    if req.organizations != ["system:nodes"] {
        return skip(node, format!("organization {:?} is not [system:nodes]", req.organizations));
    }
    let exists = node_addresses(name);
    match facts.signer {
        CLIENT_SIGNER => {
            if !req.dns.is_empty() || !req.ips.is_empty() || req.others > 0 {
                return skip(
                    node,
                    "a kubelet client certificate request has no SANs; this one has",
                );
            }
            if facts.username == cn {
                return match exists {
                    Some(_) => {
                        Verdict { approve: true, node, reason: "renewal by the node itself".into() }
                    }
                    None => skip(node, format!("requested by {cn}, but there is no Node {name}")),
                };
            }
            let bootstrap = facts.username.starts_with("system:bootstrap:")
                && facts.groups.iter().any(|g| g == "system:bootstrappers");
            if !bootstrap {
                return skip(
                    node,
                    format!("requested by {}, neither {cn} nor a bootstrap token", facts.username),
                );
            }
            if exists.is_some() {
                Verdict { approve: true, node, reason: "bootstrap token, Node exists".into() }
            } else if hosts.iter().any(|h| h == name) {
                Verdict {
                    approve: true,
                    node,
                    reason: "bootstrap token for a host given in --hosts".into(),
                }
            } else {
                skip(
                    node,
                    format!("bootstrap token, but no Node {name} and {name} is not in --hosts"),
                )
            }
        }
        SERVING_SIGNER => {
            if facts.username != cn {
                return skip(node, format!("requested by {}, not by {cn}", facts.username));
            }
            let Some(addrs) = exists else {
                return skip(node, format!("there is no Node {name}"));
            };
            if req.others > 0 {
                return skip(node, "SANs other than DNS names and IP addresses");
            }
            if req.dns.is_empty() && req.ips.is_empty() {
                return skip(node, "no SANs");
            }
            let foreign: Vec<&String> =
                req.dns.iter().chain(req.ips.iter()).filter(|s| !addrs.contains(s)).collect();
            if !foreign.is_empty() {
                return skip(
                    node,
                    format!("SANs {foreign:?} are not among Node {name}'s addresses {addrs:?}"),
                );
            }
            Verdict {
                approve: true,
                node,
                reason: "requested by the node for its own addresses".into(),
            }
        }
        other => skip(node, format!("signer {other} is not a kubelet signer")),
    }
}
