// Shared by the build scripts of every crate that parses the project's WIT
// (`include!`d, not a crate, so it costs no extra build step).
//
// The harness's host bindings are generated from Spin's interfaces as the
// spin-sdk crates ship them (5.2 for WASIp2 guests, 6.0 for WASIp3 ones), and
// the WASIp3 probes' WIT `use`s `spin:redis@3.0.0`. Rather than commit edited
// copies, we copy each spin-sdk's own `wit/` directory (its world plus every
// dependency package) into the git-ignored `wit/deps/spin-sdk/` and
// `wit/deps/spin-sdk-6/`, so the bindings macros can push that directory
// first and then the project's own files on top.

use std::path::{Path, PathBuf};

const SPIN_SDK: &str = "spin-sdk";

fn workspace_root() -> PathBuf {
    let mut dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    while !dir.join("Cargo.lock").exists() || !dir.join("wit").is_dir() {
        assert!(dir.pop(), "workspace root (with Cargo.lock and wit/) not found");
    }
    dir
}

/// The spin-sdk version of major `major` the lock file pins, if any.
fn locked_spin_sdk_version(root: &Path, major: u64) -> Option<String> {
    let lockfile = cargo_lock::Lockfile::load(root.join("Cargo.lock")).expect("reading Cargo.lock");
    lockfile
        .packages
        .iter()
        .find(|p| p.name.as_str() == SPIN_SDK && p.version.major == major)
        .map(|p| p.version.to_string())
}

/// Where cargo unpacked spin-sdk: ask `cargo metadata`, which also downloads it if needed.
fn spin_sdk_source(root: &Path, version: &str) -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(registry) = cargo_home.map(|h| h.join("registry").join("src")) {
        if let Ok(indexes) = std::fs::read_dir(&registry) {
            for index in indexes.flatten() {
                let candidate = index.path().join(format!("{SPIN_SDK}-{version}"));
                if candidate.join("wit").is_dir() {
                    return candidate;
                }
            }
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .output()
        .expect("running cargo metadata");
    let metadata = String::from_utf8_lossy(&output.stdout);
    let needle = format!("{SPIN_SDK}-{version}");
    metadata
        .split('"')
        .find(|s| s.ends_with("Cargo.toml") && s.contains(&needle))
        .map(|manifest| PathBuf::from(manifest).parent().unwrap().to_path_buf())
        .unwrap_or_else(|| panic!("{needle} not found by cargo metadata"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating wit deps dir");
    for entry in std::fs::read_dir(from).expect("reading spin-sdk wit") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copying wit file");
        }
    }
}

/// Makes `wit/deps/spin-sdk/` a copy of the locked spin-sdk 5's `wit/` (the
/// WASIp2 interfaces the harness hosts, for its WASIp2 probe) and, when the lock also holds spin-sdk 6 (the
/// WASIp3 interfaces: `spin:redis@3.0.0`, `spin:postgres@4.2.0`,
/// `spin:variables@3.0.0`), `wit/deps/spin-sdk-6/` a copy of its `wit/`.
pub fn sync_wit_deps() {
    let root = workspace_root();
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());
    for file in ["ratelimit.wit", "metrics.wit", "app.wit"] {
        println!("cargo:rerun-if-changed={}", root.join("wit").join(file).display());
    }
    let v5 = locked_spin_sdk_version(&root, 5).unwrap_or_else(|| panic!("{SPIN_SDK} 5 is not in Cargo.lock"));
    sync_one(&root, &v5, SPIN_SDK);
    if let Some(v6) = locked_spin_sdk_version(&root, 6) {
        sync_one(&root, &v6, "spin-sdk-6");
    }
}

fn sync_one(root: &Path, version: &str, dir_name: &str) {
    let target = root.join("wit").join("deps").join(dir_name);
    let stamp = target.join(".version");
    println!("cargo:rerun-if-changed={}", stamp.display());
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(version) {
        return;
    }
    let source = spin_sdk_source(root, version).join("wit");
    // Build scripts of several crates may run at once: copy aside, then rename into place.
    let staging = root
        .join("wit")
        .join("deps")
        .join(format!(".{dir_name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    copy_dir(&source, &staging);
    std::fs::write(staging.join(".version"), version).expect("writing stamp");
    let _ = std::fs::remove_dir_all(&target);
    if std::fs::rename(&staging, &target).is_err() {
        // Another build script won the race with the same content.
        let _ = std::fs::remove_dir_all(&staging);
    }
}
