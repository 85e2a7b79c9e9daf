//! Connection settings, read the way etcdctl reads them: flags first, then `ETCDCTL_*`
//! environment variables, then what an etcd manifest or a directory of mounted Secrets
//! holds (`--etcd-secrets-dir` before `--etcd-manifest`), then etcdctl's defaults.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::ClientError;

/// etcdctl's default endpoint.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";
/// etcdctl's default `--dial-timeout`.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// etcdctl's default `--command-timeout`.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A password that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// What the command line gave; `None` means "not given", so the environment may supply it.
#[derive(Clone, Debug, Default)]
pub struct ConnectFlags {
    pub endpoints: Option<Vec<String>>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub dial_timeout: Option<String>,
    pub command_timeout: Option<String>,
    /// An etcd manifest (static pod, Pod, StatefulSet…): endpoints and TLS files where
    /// neither a flag nor an `ETCDCTL_*` variable gives them.
    pub etcd_manifest: Option<PathBuf>,
    /// A directory of mounted Secret keys (`ca.crt`, `tls.crt`/`tls.key`,
    /// `etcd-client.crt`/`etcd-client.key`, `etcd-client-ca.crt`): TLS files where neither a
    /// flag nor an `ETCDCTL_*` variable gives them; before the manifest's.
    pub etcd_secrets_dir: Option<PathBuf>,
}

/// File names a Secret holding an etcd CA is mounted with: Kubernetes' `ca.crt`, and
/// `etcd-client-ca.crt` as OpenShift and HyperShift name it.
pub const SECRET_CA_FILES: &[&str] = &["ca.crt", "etcd-client-ca.crt"];
/// Certificate/key pairs of a mounted client certificate Secret: a `kubernetes.io/tls`
/// Secret's keys, and HyperShift's `etcd-client-tls`.
pub const SECRET_CERT_PAIRS: &[(&str, &str)] =
    &[("tls.crt", "tls.key"), ("etcd-client.crt", "etcd-client.key")];

/// Values found in `--etcd-secrets-dir` / `--etcd-manifest`, each with where it came from.
#[derive(Default)]
struct Found {
    endpoints: Option<(Vec<String>, String)>,
    cacert: Option<(PathBuf, String)>,
    cert_key: Option<(PathBuf, PathBuf, String)>,
}

impl Found {
    fn read(flags: &ConnectFlags, notes: &mut Vec<String>) -> Result<Found, ClientError> {
        let mut found = Found::default();
        if let Some(dir) = &flags.etcd_secrets_dir {
            found = from_secrets_dir(dir)?;
        }
        if let Some(manifest) = &flags.etcd_manifest {
            let access = etcdguard_node::read_etcd_client_access(manifest)
                .map_err(|e| ClientError::Config(format!("--etcd-manifest {e}")))?;
            let origin = |flag: &str| format!("--etcd-manifest {} {flag}", manifest.display());
            notes.extend(
                access.notes.iter().map(|n| format!("--etcd-manifest {}: {n}", manifest.display())),
            );
            found.endpoints = access.endpoints.map(|(urls, flag)| (urls, origin(flag)));
            if found.cacert.is_none() {
                found.cacert = access.cacert.map(|(p, flag)| (p, origin(flag)));
            }
            if found.cert_key.is_none() {
                found.cert_key = access.cert_key.map(|(c, k, flags)| (c, k, origin(flags)));
            }
        }
        Ok(found)
    }
}

/// The TLS files of a directory of mounted Secrets.
fn from_secrets_dir(dir: &Path) -> Result<Found, ClientError> {
    let bad = |m: String| ClientError::Config(format!("--etcd-secrets-dir {}: {m}", dir.display()));
    if !dir.is_dir() {
        return Err(bad("not a directory".into()));
    }
    let origin = |names: String| format!("--etcd-secrets-dir {}: {names}", dir.display());
    let mut found = Found {
        cacert: SECRET_CA_FILES
            .iter()
            .find(|n| dir.join(n).exists())
            .map(|n| (dir.join(n), origin(n.to_string()))),
        ..Found::default()
    };
    for (cert, key) in SECRET_CERT_PAIRS {
        match (dir.join(cert).exists(), dir.join(key).exists()) {
            (true, true) => {
                found.cert_key =
                    Some((dir.join(cert), dir.join(key), origin(format!("{cert}, {key}"))));
                break;
            }
            (true, false) => return Err(bad(format!("{cert} is there but {key} is not"))),
            (false, true) => return Err(bad(format!("{key} is there but {cert} is not"))),
            (false, false) => {}
        }
    }
    if found.cacert.is_none() && found.cert_key.is_none() {
        let pairs: Vec<String> =
            SECRET_CERT_PAIRS.iter().map(|(c, k)| format!("{c}/{k}")).collect();
        return Err(bad(format!(
            "holds none of {}, {}",
            SECRET_CA_FILES.join(", "),
            pairs.join(", ")
        )));
    }
    Ok(found)
}

/// A TLS file found in a manifest or Secrets dir must be there; said before connecting,
/// with where its path came from.
fn must_exist(path: &Path, origin: &str, flag: &str) -> Result<(), ClientError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(ClientError::Config(format!(
            "{} (from {origin}) is not a file; give {flag}",
            path.display()
        ))),
        Err(e) => Err(ClientError::Config(format!(
            "cannot read {} (from {origin}): {e}; mount it there or give {flag}",
            path.display()
        ))),
    }
}

/// Resolved connection settings.
#[derive(Clone, Debug)]
pub struct ConnectConfig {
    /// Normalised URLs (`http://host:port` or `https://host:port`).
    pub endpoints: Vec<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub dial_timeout: Duration,
    pub command_timeout: Duration,
    /// A snapshot stream that delivers nothing for this long is abandoned.
    pub stall_timeout: Duration,
}

/// The environment variables etcdctl reads for the connection flags.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("--endpoints", "ETCDCTL_ENDPOINTS"),
    ("--cacert", "ETCDCTL_CACERT"),
    ("--cert", "ETCDCTL_CERT"),
    ("--key", "ETCDCTL_KEY"),
    ("--user", "ETCDCTL_USER"),
    ("--password", "ETCDCTL_PASSWORD"),
    ("--dial-timeout", "ETCDCTL_DIAL_TIMEOUT"),
    ("--command-timeout", "ETCDCTL_COMMAND_TIMEOUT"),
];

impl ConnectConfig {
    /// Flags win over the process environment; returns the settings and notes worth telling
    /// the user (e.g. an environment variable shadowed by a flag).
    pub fn resolve(flags: ConnectFlags) -> Result<(ConnectConfig, Vec<String>), ClientError> {
        Self::resolve_with(flags, |name| std::env::var(name).ok())
    }

    /// Like [`resolve`](Self::resolve) with an explicit environment (for tests).
    pub fn resolve_with(
        flags: ConnectFlags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(ConnectConfig, Vec<String>), ClientError> {
        let mut notes = Vec::new();
        let env_nonempty = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let mut pick = |flag: &str, given: bool| -> Option<String> {
            let var =
                ENV_VARS.iter().find(|(f, _)| *f == flag).map(|(_, v)| *v).unwrap_or_default();
            let value = env_nonempty(var);
            if given {
                if value.is_some() {
                    notes.push(format!("{var} is set but {flag} was given; using the flag"));
                }
                None
            } else {
                value
            }
        };

        let env_endpoints = pick("--endpoints", flags.endpoints.is_some());
        let env_cacert = pick("--cacert", flags.cacert.is_some());
        let env_cert = pick("--cert", flags.cert.is_some());
        let env_key = pick("--key", flags.key.is_some());
        let env_user = pick("--user", flags.user.is_some());
        let env_password = pick("--password", flags.password.is_some());
        let env_dial = pick("--dial-timeout", flags.dial_timeout.is_some());
        let env_command = pick("--command-timeout", flags.command_timeout.is_some());

        let found = Found::read(&flags, &mut notes)?;
        let told = flags.etcd_manifest.is_some() || flags.etcd_secrets_dir.is_some();
        // With a manifest or Secrets dir, every value says where it came from.
        let mut origin = |what: &str, value: &str, from: &str| {
            if told {
                notes.push(format!("{what} {value} from {from}"));
            }
        };

        let raw_endpoints: Vec<String> = match (flags.endpoints, env_endpoints, found.endpoints) {
            (Some(list), _, _) => {
                origin("endpoints", &list.join(","), "--endpoints");
                list
            }
            (None, Some(s), _) => {
                origin("endpoints", &s, "ETCDCTL_ENDPOINTS");
                vec![s]
            }
            (None, None, Some((list, from))) => {
                origin("endpoints", &list.join(","), &from);
                list
            }
            (None, None, None) => {
                origin("endpoints", DEFAULT_ENDPOINT, "the default");
                vec![DEFAULT_ENDPOINT.to_string()]
            }
        };
        let raw_endpoints: Vec<String> = raw_endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if raw_endpoints.is_empty() {
            return Err(ClientError::Config(
                "no endpoint given (--endpoints or ETCDCTL_ENDPOINTS)".into(),
            ));
        }

        let mut file = |flag: &str,
                        var: &str,
                        given: Option<PathBuf>,
                        env: Option<String>,
                        found: Option<(PathBuf, String)>| {
            if let Some(p) = given {
                origin(flag, &p.display().to_string(), flag);
                Ok(Some(p))
            } else if let Some(p) = env {
                origin(flag, &p, var);
                Ok(Some(PathBuf::from(p)))
            } else if let Some((p, from)) = found {
                must_exist(&p, &from, flag)?;
                origin(flag, &p.display().to_string(), &from);
                Ok(Some(p))
            } else {
                Ok::<_, ClientError>(None)
            }
        };
        let cacert = file("--cacert", "ETCDCTL_CACERT", flags.cacert, env_cacert, found.cacert)?;
        // The certificate and its key come from one place: a pair is never split.
        let pair_given =
            flags.cert.is_some() || flags.key.is_some() || env_cert.is_some() || env_key.is_some();
        let (found_cert, found_key) = match found.cert_key {
            Some((c, k, from)) if !pair_given => (Some((c, from.clone())), Some((k, from))),
            _ => (None, None),
        };
        let cert = file("--cert", "ETCDCTL_CERT", flags.cert, env_cert, found_cert)?;
        let key = file("--key", "ETCDCTL_KEY", flags.key, env_key, found_key)?;
        match (&cert, &key) {
            (Some(_), None) => {
                return Err(ClientError::Config(
                    "--cert was given without --key (ETCDCTL_KEY)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ClientError::Config(
                    "--key was given without --cert (ETCDCTL_CERT)".into(),
                ))
            }
            _ => {}
        }
        let tls = cacert.is_some() || cert.is_some();
        let endpoints = raw_endpoints
            .iter()
            .map(|e| normalize_endpoint(e, tls))
            .collect::<Result<Vec<_>, _>>()?;

        // etcdctl accepts `--user name:password` when no password is given separately.
        let mut user = flags.user.or(env_user);
        let mut password = flags.password.or(env_password.map(Secret::new));
        if let (Some(u), None) = (&user, &password) {
            match u.split_once(':') {
                Some((name, pass)) => {
                    password = Some(Secret::new(pass));
                    user = Some(name.to_string());
                }
                None => {
                    return Err(ClientError::Config(format!(
                        "no password for user {u:?}: give --password, ETCDCTL_PASSWORD or --user {u}:PASSWORD"
                    )))
                }
            }
        }
        if user.as_deref() == Some("") {
            return Err(ClientError::Config("--user is empty".into()));
        }
        if user.is_none() && password.is_some() {
            return Err(ClientError::Config("--password was given without --user".into()));
        }

        let duration =
            |flag: &str, given: Option<String>, env: Option<String>, default: Duration| match given
                .or(env)
            {
                None => Ok(default),
                Some(s) => parse_go_duration(&s)
                    .map_err(|e| ClientError::Config(format!("{flag} {s:?}: {e}"))),
            };
        let dial_timeout =
            duration("--dial-timeout", flags.dial_timeout, env_dial, DEFAULT_DIAL_TIMEOUT)?;
        let command_timeout = duration(
            "--command-timeout",
            flags.command_timeout,
            env_command,
            DEFAULT_COMMAND_TIMEOUT,
        )?;
        if dial_timeout.is_zero() || command_timeout.is_zero() {
            return Err(ClientError::Config("timeouts must be greater than zero".into()));
        }

        Ok((
            ConnectConfig {
                endpoints,
                cacert,
                cert,
                key,
                user,
                password,
                dial_timeout,
                command_timeout,
                stall_timeout: Duration::from_secs(30).max(command_timeout),
            },
            notes,
        ))
    }

    /// True when TLS files were given (endpoints without a scheme then use https).
    pub fn uses_tls_files(&self) -> bool {
        self.cacert.is_some() || self.cert.is_some()
    }
}

/// `host:port` → `http://host:port` (or https when TLS files are given); URLs are kept.
pub fn normalize_endpoint(raw: &str, tls: bool) -> Result<String, ClientError> {
    let raw = raw.trim().trim_end_matches('/');
    let url = if let Some(rest) = raw.strip_prefix("http://") {
        if tls {
            return Err(ClientError::Config(format!(
                "endpoint {raw} is plain http but TLS files (--cacert/--cert/--key) were given; use https://{rest}"
            )));
        }
        raw.to_string()
    } else if raw.starts_with("https://") {
        raw.to_string()
    } else if raw.contains("://") {
        return Err(ClientError::Config(format!(
            "endpoint {raw}: only http:// and https:// endpoints are supported"
        )));
    } else if tls {
        format!("https://{raw}")
    } else {
        format!("http://{raw}")
    };
    let host_port = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
    if host_port.is_empty() || host_port.contains('/') || host_port.contains('@') {
        return Err(ClientError::Config(format!(
            "endpoint {raw:?} is not host:port or a URL of the form https://host:port"
        )));
    }
    Ok(url)
}

/// Parses a Go `time.Duration` string as etcdctl flags take it: `5s`, `1m30s`, `500ms`, `1.5h`.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.starts_with('-') {
        return Err("negative duration".into());
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err("expected a number, e.g. 5s, 500ms, 1m30s".into());
        }
        let number: f64 =
            rest[..num_len].parse().map_err(|_| format!("bad number {:?}", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err("missing unit (use ns, us, ms, s, m or h), e.g. 5s".into()),
            other => return Err(format!("unknown unit {other:?} (use ns, us, ms, s, m or h)")),
        };
        total += number * scale;
    }
    if !total.is_finite() || total > 1e9 {
        return Err("duration too large".into());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_go_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_go_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_go_duration("5").unwrap_err().contains("missing unit"));
        assert!(parse_go_duration("5 days").is_err());
        assert!(parse_go_duration("-1s").is_err());
        assert!(parse_go_duration("").is_err());
    }

    #[test]
    fn defaults_are_etcdctls() {
        let (cfg, notes) = ConnectConfig::resolve_with(ConnectFlags::default(), env(&[])).unwrap();
        assert_eq!(cfg.endpoints, vec!["http://127.0.0.1:2379"]);
        assert_eq!(cfg.dial_timeout, Duration::from_secs(2));
        assert_eq!(cfg.command_timeout, Duration::from_secs(5));
        assert!(notes.is_empty());
    }

    #[test]
    fn environment_is_read_like_etcdctl() {
        let e = env(&[
            ("ETCDCTL_ENDPOINTS", "10.0.0.1:2379,10.0.0.2:2379"),
            ("ETCDCTL_CACERT", "/pki/ca.crt"),
            ("ETCDCTL_CERT", "/pki/c.crt"),
            ("ETCDCTL_KEY", "/pki/c.key"),
            ("ETCDCTL_USER", "root:s3cret"),
            ("ETCDCTL_DIAL_TIMEOUT", "3s"),
            ("ETCDCTL_COMMAND_TIMEOUT", "1m"),
        ]);
        let (cfg, _) = ConnectConfig::resolve_with(ConnectFlags::default(), e).unwrap();
        assert_eq!(cfg.endpoints, vec!["https://10.0.0.1:2379", "https://10.0.0.2:2379"]);
        assert_eq!(cfg.cacert.as_deref(), Some(std::path::Path::new("/pki/ca.crt")));
        assert_eq!(cfg.user.as_deref(), Some("root"));
        assert_eq!(cfg.password.as_ref().map(|p| p.expose()), Some("s3cret"));
        assert_eq!(cfg.dial_timeout, Duration::from_secs(3));
        assert_eq!(cfg.command_timeout, Duration::from_secs(60));
        assert!(!format!("{cfg:?}").contains("s3cret"), "password must not appear in Debug output");
    }

    #[test]
    fn flags_win_over_environment() {
        let flags =
            ConnectFlags { endpoints: Some(vec!["127.0.0.1:1".into()]), ..Default::default() };
        let (cfg, notes) =
            ConnectConfig::resolve_with(flags, env(&[("ETCDCTL_ENDPOINTS", "127.0.0.1:2")]))
                .unwrap();
        assert_eq!(cfg.endpoints, vec!["http://127.0.0.1:1"]);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("ETCDCTL_ENDPOINTS"));
    }

    #[test]
    fn secrets_dir_fills_what_flags_and_environment_leave() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ca.crt", "etcd-client.crt", "etcd-client.key"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let flags =
            ConnectFlags { etcd_secrets_dir: Some(dir.path().into()), ..Default::default() };
        let (cfg, notes) = ConnectConfig::resolve_with(flags.clone(), env(&[])).unwrap();
        assert_eq!(cfg.endpoints, vec!["https://127.0.0.1:2379"]);
        assert_eq!(cfg.cacert, Some(dir.path().join("ca.crt")));
        assert_eq!(cfg.cert, Some(dir.path().join("etcd-client.crt")));
        assert_eq!(cfg.key, Some(dir.path().join("etcd-client.key")));
        assert!(
            notes.iter().any(|n| n.starts_with("--cert ") && n.contains("--etcd-secrets-dir")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.starts_with("endpoints 127.0.0.1:2379 from the default")),
            "{notes:?}"
        );

        // The environment wins, and a pair is never split between two places.
        let e = env(&[
            ("ETCDCTL_CACERT", "/pki/ca.crt"),
            ("ETCDCTL_CERT", "/pki/c.crt"),
            ("ETCDCTL_KEY", "/pki/c.key"),
        ]);
        let (cfg, notes) = ConnectConfig::resolve_with(flags.clone(), e).unwrap();
        assert_eq!(cfg.cacert.as_deref(), Some(Path::new("/pki/ca.crt")));
        assert_eq!(cfg.key.as_deref(), Some(Path::new("/pki/c.key")));
        assert!(notes.iter().any(|n| n == "--cert /pki/c.crt from ETCDCTL_CERT"), "{notes:?}");
        let only_cert = ConnectFlags { cert: Some("/pki/c.crt".into()), ..flags.clone() };
        let err = ConnectConfig::resolve_with(only_cert, env(&[])).unwrap_err().to_string();
        assert!(err.contains("--cert was given without --key"), "{err}");
    }

    #[test]
    fn secrets_dir_problems_are_said() {
        let dir = tempfile::tempdir().unwrap();
        let flags =
            ConnectFlags { etcd_secrets_dir: Some(dir.path().into()), ..Default::default() };
        let err = |flags: &ConnectFlags| {
            ConnectConfig::resolve_with(flags.clone(), env(&[])).unwrap_err().to_string()
        };
        assert!(err(&flags).contains("holds none of ca.crt"), "{}", err(&flags));
        std::fs::write(dir.path().join("tls.crt"), "x").unwrap();
        assert!(err(&flags).contains("tls.crt is there but tls.key is not"), "{}", err(&flags));
        let missing =
            ConnectFlags { etcd_secrets_dir: Some(dir.path().join("nope")), ..Default::default() };
        assert!(err(&missing).contains("not a directory"), "{}", err(&missing));
    }

    #[test]
    fn bad_combinations_are_refused() {
        let r = |flags| ConnectConfig::resolve_with(flags, env(&[])).unwrap_err().to_string();
        assert!(r(ConnectFlags { cert: Some("c".into()), ..Default::default() }).contains("--key"));
        assert!(r(ConnectFlags { user: Some("root".into()), ..Default::default() })
            .contains("no password"));
        assert!(r(ConnectFlags {
            endpoints: Some(vec!["http://a:1".into()]),
            cacert: Some("ca".into()),
            ..Default::default()
        })
        .contains("https://a:1"));
        assert!(r(ConnectFlags { endpoints: Some(vec!["unix://x".into()]), ..Default::default() })
            .contains("only http"));
        assert!(r(ConnectFlags { dial_timeout: Some("2".into()), ..Default::default() })
            .contains("--dial-timeout"));
    }
}
