//! Helpers shared by the repository's unit tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::store::LocalDir;
use rand::{RngCore, SeedableRng};

pub(crate) fn repo(dir: &Path, pack_size: u64) -> Repository {
    let store: Arc<dyn Store> = Arc::new(LocalDir::new(dir.to_path_buf()));
    Repository::init(store, &InitOptions { chunk_size: 4096, pack_size, ..Default::default() })
        .unwrap()
}

pub(crate) fn meta() -> BackupMeta {
    BackupMeta {
        source: Source::File { path: "test".into(), import: None },
        etcd: EtcdInfo { page_size: 4096, ..Default::default() },
        labels: BTreeMap::new(),
        cluster: None,
        created: None,
    }
}

pub(crate) fn backup(r: &Repository, data: &[u8]) -> Manifest {
    let mut w = r.begin_backup().unwrap();
    let part = w.add_snapshot(&mut &data[..], 4096).unwrap();
    w.commit(part, meta()).unwrap()
}

pub(crate) fn restore(r: &Repository, m: &Manifest) -> Vec<u8> {
    let index = r.load_index().unwrap();
    let mut out = Vec::new();
    r.read_part(&index, &m.snapshot, &mut out).unwrap();
    out
}

/// 1 MiB + 32 bytes of half-compressible "pages".
pub(crate) fn db(seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; 256 * 4096 + 32];
    for page in v.chunks_mut(4096) {
        let half = page.len() / 2;
        rng.fill_bytes(&mut page[..half]);
    }
    v
}

pub(crate) fn cheap_kdf() -> KdfParams {
    KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 }
}

/// Every byte of every object under `dir`.
pub(crate) fn all_stored_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.extend(fs::read(&p).unwrap());
            }
        }
    }
    out
}

pub(crate) fn encrypted_repo(dir: &Path) -> (Repository, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(LocalDir::new(dir.to_path_buf()));
    let opts = InitOptions {
        chunk_size: 4096,
        pack_size: 64 * 1024,
        passphrase: Some(Passphrase::new(b"pw".to_vec())),
        kdf: cheap_kdf(),
    };
    (Repository::init(store.clone(), &opts).unwrap(), store)
}

pub(crate) fn plant_temporary(path: &Path, age: std::time::Duration) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = fs::File::create(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - age).unwrap();
}

pub(crate) fn copy_tree(from: &Path, to: &Path) {
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            fs::create_dir_all(&dest).unwrap();
            copy_tree(&e.path(), &dest);
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}
