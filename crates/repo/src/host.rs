//! The name of this machine, as recorded in locks, manifests and key files.

/// The kernel's node name (`uname -n`), or `unknown` where it is empty.
pub fn hostname() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy();
    if name.is_empty() {
        "unknown".into()
    } else {
        name.into_owned()
    }
}
