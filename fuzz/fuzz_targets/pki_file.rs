//! The PKI scan of one file's bytes (`etcdguard_node::pki::scan_file`): PEM framing, base64,
//! the X.509 parser and the DER fallback for `.crt` names. `pki check` and `backup create
//! --pki-dir` run it on every file of a node's PKI directory, so no input may panic.
//! The first byte picks how the rest is presented, so the fuzzer reaches the X.509 parser
//! without having to discover PEM armour first.
#![no_main]

use base64::Engine;
use etcdguard_node::pki::{scan_file, Certificate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let wrapped;
    let (name, bytes) = match mode % 3 {
        // As a file named like a certificate: PEM, else DER, else a problem.
        0 => ("dir/f.crt", rest),
        // As any other file: PEM only; no PEM is skipped.
        1 => ("dir/f.key", rest),
        // The bytes as the DER body of one PEM CERTIFICATE block.
        _ => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(rest);
            wrapped = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
                .into_bytes();
            ("dir/f.pem", &wrapped[..])
        }
    };
    let (certs, problems) = scan_file(name, bytes);
    for (i, c) in certs.iter().enumerate() {
        assert_eq!(c.path, name);
        assert_eq!(c.index as usize, i);
        assert!(!c.serial.is_empty() && c.serial.bytes().all(|b| b.is_ascii_hexdigit()));
        // What goes into a backup manifest must read back as it was written.
        let json = serde_json::to_string(c).unwrap();
        let back: Certificate = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, c);
    }
    for p in &problems {
        assert_eq!(p.path, name);
        assert!(!p.message.is_empty());
    }
    if mode % 3 == 1
        && !bytes.windows(11).any(|w| w == b"-----BEGIN ")
        && !bytes.windows(9).any(|w| w == b"-----END ")
    {
        // Not PEM and not named like a certificate: skipped without a word.
        assert!(certs.is_empty() && problems.is_empty());
    }
});
