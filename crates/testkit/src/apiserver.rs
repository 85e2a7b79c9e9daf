//! Kubernetes for the tests: the `generated.proto` files of a k8s.io/api release from the Go
//! module cache ([`k8s_api_module`]).

use std::path::PathBuf;
use std::process::Command;

/// The folder of Go module `module@version` (`latest` for the newest release) in the Go
/// module cache, downloaded with `go mod download` if it is not there yet; `None` only when
/// no `go` is on PATH (the caller says so and skips). A failing download panics.
pub fn go_module_dir(module: &str, version: &str) -> Option<PathBuf> {
    let go = which("go")?;
    let scratch = tempfile::tempdir().expect("temp dir");
    // Outside any module, with the machine's Go only: a plain download into the cache.
    let out = Command::new(go)
        .args(["mod", "download", "-json", &format!("{module}@{version}")])
        .current_dir(scratch.path())
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("running go mod download");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("go mod download {module}@{version}: {e}\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    assert!(out.status.success() && info.get("Error").is_none(), "go mod download {module}@{version} failed: {info}\n{}", String::from_utf8_lossy(&out.stderr));
    let dir = PathBuf::from(info["Dir"].as_str().expect("go mod download -json prints Dir"));
    assert!(dir.join("go.mod").is_file(), "{} has no go.mod", dir.display());
    Some(dir)
}

/// The newest k8s.io/api release and the k8s.io/apimachinery it requires (both in the module
/// cache, side by side, as `--schema-dir` expects), and the release's version.
pub fn k8s_api_module() -> Option<(PathBuf, String)> {
    let api = go_module_dir("k8s.io/api", "latest")?;
    let go_mod = std::fs::read_to_string(api.join("go.mod")).expect("reading k8s.io/api's go.mod");
    let machinery = go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("k8s.io/apimachinery "))
        .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
        .expect("k8s.io/api requires k8s.io/apimachinery");
    go_module_dir("k8s.io/apimachinery", &machinery)?;
    let version = api.file_name().and_then(|n| n.to_str()).and_then(|n| n.rsplit_once('@')).map(|(_, v)| v.to_string()).unwrap_or_default();
    Some((api, version))
}

/// `name` on PATH, or where the Go tarball installs it.
fn which(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()));
    on_path.or_else(|| Some(PathBuf::from("/usr/local/go/bin").join(name)).filter(|p| p.is_file()))
}
