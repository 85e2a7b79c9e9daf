//! `backup log`: the stored changes, with the object each one touched, and the gaps.

use super::*;

/// One entry of `backup log`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogEntry {
    pub revision: i64,
    pub time: Option<DateTime<Utc>>,
    pub key: String,
    pub op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Revisions `first..=last` after full backup `base` are in no stored segment (one was lost
/// or deleted): `restore --at` cannot cross them.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogGap {
    pub full_backup: String,
    pub first_revision: i64,
    pub last_revision: i64,
}

/// One line of `backup log`: a change, or a gap where changes are missing.
#[derive(Debug, Clone)]
pub enum LogItem {
    Change(LogEntry),
    Gap(LogGap),
}

/// What `backup log` lists.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub key: Option<Vec<u8>>,
    pub prefix: Option<Vec<u8>>,
    pub since: Option<DateTime<Utc>>,
    pub limit: Option<usize>,
}

/// The changes stored in the repository's segments, oldest first, filtered, and the gaps
/// between them (whatever the filter: a missing change may be the one looked for).
pub fn log(repo: &Repository, filter: &LogFilter, each: &mut dyn FnMut(LogItem)) -> Result<usize> {
    let mut n = 0;
    // Per full backup, the last revision listed: overlapping segments (two writers around a
    // change of leader) are listed once. Changes start right after the full backup's revision.
    let mut listed_through: HashMap<String, i64> = HashMap::new();
    for info in repo.list_segments(None)? {
        let through = listed_through.entry(info.base.clone()).or_insert_with(|| {
            repo.manifest(&info.base).map_or(info.first - 1, |m| m.etcd.revision)
        });
        if info.first > *through + 1 {
            each(LogItem::Gap(LogGap {
                full_backup: info.base.clone(),
                first_revision: *through + 1,
                last_revision: info.first - 1,
            }));
        }
        let s = repo.read_segment(&info)?;
        let times: HashMap<i64, i64> = s.times.iter().copied().collect();
        let skip_through = *through;
        *through = (*through).max(info.last);
        for c in s.changes {
            if c.mod_revision <= skip_through {
                continue;
            }
            if filter.key.as_ref().is_some_and(|k| *k != c.key)
                || filter.prefix.as_ref().is_some_and(|p| !c.key.starts_with(p))
            {
                continue;
            }
            let time = times.get(&c.mod_revision).and_then(|ms| millis(*ms));
            if filter.since.is_some_and(|since| time.is_none_or(|t| t < since)) {
                continue;
            }
            let object = c.put.then(|| etcdguard_kube::decode(&c.value));
            let meta = object.as_ref().and_then(|o| o.metadata.clone());
            let path = etcdguard_kube::key_path(&c.key, meta.as_ref());
            n += 1;
            each(LogItem::Change(LogEntry {
                revision: c.mod_revision,
                time,
                key: String::from_utf8_lossy(&c.key).into_owned(),
                op: if c.put { "put" } else { "delete" },
                kind: object.as_ref().map(|o| o.kind.clone()).filter(|k| !k.is_empty()),
                namespace: path.as_ref().map(|p| p.namespace.clone()).filter(|n| !n.is_empty()),
                name: path.map(|p| p.name),
            }));
            if filter.limit.is_some_and(|l| n >= l) {
                return Ok(n);
            }
        }
    }
    Ok(n)
}
