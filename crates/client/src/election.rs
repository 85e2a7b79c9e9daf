//! Leader election among several etcdguard processes (one active agent per cluster), on
//! etcd's own election API (`v3election`: Campaign, Leader, Resign) with a lease we keep
//! alive ourselves.
//!
//! [`Election::start`] spawns one thread with its own single-threaded tokio runtime (the
//! blocking [`Session`](crate::Session) cannot host a task that must run while the caller
//! sleeps or works). That thread, in a loop: connects to the first endpoint that answers,
//! grants a lease with the TTL, keeps it alive (every TTL/3), campaigns, and once etcd says we
//! lead checks that the leader key is ours and watches it. Any doubt — no keepalive answer,
//! the lease gone, the key deleted, the connection broken — ends the round: we step down at
//! once, revoke the lease when etcd can be reached (so a standby takes over without waiting
//! for the TTL), and campaign again as a standby.
//!
//! The safety rule lives in [`Election::is_leader`], evaluated in the caller's thread: it is
//! true only while the lease is known to be alive, i.e. before (send time of the last answered
//! keepalive + granted TTL − margin). etcd cannot expire the lease earlier than that, so a
//! standby cannot be elected while we still believe we lead, even if our background thread
//! is stuck or etcd stopped answering.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd_client::{EventType, LeaderKey, ResignOptions, WatchOptions};

use crate::config::ConnectConfig;
use crate::conn::{connect_with, Connection, TlsMaterial};
use crate::error::ClientError;

/// Lease TTL when none is given: a dead leader's turn passes on within about this long.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);
/// etcd refuses leases shorter than its minimum (2 s with default timing).
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// What to campaign for.
#[derive(Clone, Debug)]
pub struct ElectionOptions {
    /// The election's name, a key prefix shared by all campaigners, e.g.
    /// `/etcdguard/agent/<cluster id>`. Each campaigner's key is `<name>/<lease id in hex>`.
    pub name: String,
    /// Who we are (host or pod name); the value of our key, shown to the others.
    pub value: String,
    /// Lease TTL (whole seconds, at least [`MIN_TTL`]).
    pub ttl: Duration,
}

impl ElectionOptions {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> ElectionOptions {
        ElectionOptions { name: name.into(), value: value.into(), ttl: DEFAULT_TTL }
    }

    fn check(&self) -> Result<(), ClientError> {
        if self.name.trim().is_empty() {
            return Err(ClientError::Config(
                "election name is empty; use a key prefix such as /etcdguard/agent/<cluster>"
                    .into(),
            ));
        }
        if self.ttl < MIN_TTL || self.ttl.subsec_nanos() != 0 {
            return Err(ClientError::Config(format!(
                "election lease TTL {:?}: use whole seconds, at least {}s",
                self.ttl,
                MIN_TTL.as_secs()
            )));
        }
        Ok(())
    }

    /// How long before the lease's computed end we stop calling ourselves leader: covers
    /// clock-rate differences and the time a caller acts on a `true` from `is_leader`.
    fn margin(&self) -> Duration {
        (self.ttl / 10).max(Duration::from_millis(300))
    }

    fn keepalive_every(&self) -> Duration {
        self.ttl / 3
    }
}

/// Where this campaigner stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not connected or no lease yet (etcd unreachable, or between rounds).
    Connecting,
    /// Campaigning; another campaigner (or nobody yet) leads.
    Standby,
    /// We lead, and our lease is known to be alive.
    Leader,
    /// [`Election::shutdown`] was called or the handle dropped.
    Stopped,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Connecting => "connecting",
            Role::Standby => "standby",
            Role::Leader => "leader",
            Role::Stopped => "stopped",
        }
    }
}

/// A snapshot of the campaigner's state, for metrics and logs.
#[derive(Clone, Debug)]
pub struct ElectionStatus {
    pub role: Role,
    /// The leader's value as last seen (ours while we lead).
    pub leader: Option<String>,
    /// Our current lease, in hex as etcdctl prints it.
    pub lease: Option<String>,
    /// When we last became leader (while we lead).
    pub leader_since: Option<Instant>,
    /// How many times we have become leader.
    pub terms: u64,
    /// Why the last round ended (lost lease, unreachable etcd …), if it failed.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct State {
    role: Role,
    /// While `role == Leader`: leadership is trusted until then.
    valid_until: Option<Instant>,
    leader: Option<String>,
    lease: Option<i64>,
    leader_since: Option<Instant>,
    terms: u64,
    last_error: Option<String>,
    stop: bool,
    resign: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    wake: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data; keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut st = self.lock();
        f(&mut st);
        drop(st);
        self.changed.notify_all();
    }

    fn step_down(&self, role: Role, error: Option<String>) {
        self.update(|st| {
            st.role = role;
            st.valid_until = None;
            st.leader_since = None;
            st.leader = None;
            if error.is_some() {
                st.last_error = error;
            }
        });
    }
}

/// A campaigner. Drop it (or call [`shutdown`](Self::shutdown)) to resign and stop.
pub struct Election {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    options: ElectionOptions,
}

impl Election {
    /// Starts campaigning in the background and returns at once (see the module docs).
    /// Fails only on bad options or TLS files; an unreachable etcd is retried.
    pub fn start(cfg: ConnectConfig, options: ElectionOptions) -> Result<Election, ClientError> {
        options.check()?;
        let tls = TlsMaterial::load(&cfg)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                role: Role::Connecting,
                valid_until: None,
                leader: None,
                lease: None,
                leader_since: None,
                terms: 0,
                last_error: None,
                stop: false,
                resign: false,
            }),
            changed: Condvar::new(),
            wake: tokio::sync::Notify::new(),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Config(format!("cannot start the async runtime: {e}")))?;
        let thread_shared = shared.clone();
        let thread_options = options.clone();
        let thread = std::thread::Builder::new()
            .name("etcdguard-election".into())
            .spawn(move || {
                rt.block_on(campaign_loop(&thread_shared, &cfg, tls.as_ref(), &thread_options));
                thread_shared.step_down(Role::Stopped, None);
            })
            .map_err(|e| ClientError::Config(format!("cannot start the election thread: {e}")))?;
        Ok(Election { shared, thread: Some(thread), options })
    }

    pub fn options(&self) -> &ElectionOptions {
        &self.options
    }

    /// True while we lead and our lease is known to be alive. Cheap; call it before every
    /// action only the leader may take.
    pub fn is_leader(&self) -> bool {
        let st = self.shared.lock();
        st.role == Role::Leader && st.valid_until.is_some_and(|t| Instant::now() < t)
    }

    pub fn status(&self) -> ElectionStatus {
        let st = self.shared.lock();
        let leading = st.role == Role::Leader && st.valid_until.is_some_and(|t| Instant::now() < t);
        let role = if st.role == Role::Leader && !leading { Role::Standby } else { st.role };
        ElectionStatus {
            role,
            leader: if st.role == Role::Leader && !leading { None } else { st.leader.clone() },
            lease: st.lease.map(|l| format!("{l:x}")),
            leader_since: if leading { st.leader_since } else { None },
            terms: st.terms,
            last_error: st.last_error.clone(),
        }
    }

    /// Blocks until we lead or `timeout` passes; returns [`is_leader`](Self::is_leader).
    pub fn wait_for_leadership(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            let now = Instant::now();
            if st.role == Role::Leader && st.valid_until.is_some_and(|t| now < t) {
                return true;
            }
            if now >= deadline || st.role == Role::Stopped {
                return false;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Blocks until the state changes (role, leader, error) or `timeout` passes.
    pub fn wait_for_change(&self, timeout: Duration) {
        let st = self.shared.lock();
        let _ = self.shared.changed.wait_timeout(st, timeout);
    }

    /// Gives up leadership now (the key is deleted, so a standby takes over at once) and
    /// campaigns again at the back of the line. Does nothing useful while standby.
    pub fn resign(&self) {
        self.shared.update(|st| {
            st.resign = true;
            if st.role == Role::Leader {
                st.role = Role::Standby;
                st.valid_until = None;
                st.leader_since = None;
            }
        });
        self.shared.wake.notify_one();
    }

    /// Resigns (when leading), revokes the lease and stops the background thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.update(|st| {
            st.stop = true;
            st.valid_until = None;
        });
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How a round ended.
enum RoundEnd {
    Stopped,
    Resigned,
    Failed(String),
}

async fn campaign_loop(
    shared: &Shared,
    cfg: &ConnectConfig,
    tls: Option<&TlsMaterial>,
    opts: &ElectionOptions,
) {
    let min_backoff = Duration::from_millis(200);
    let max_backoff = opts.keepalive_every().max(min_backoff);
    let mut backoff = min_backoff;
    loop {
        if shared.lock().stop {
            return;
        }
        let mut lease = None;
        let end = round(shared, cfg, tls, opts, &mut lease).await;
        // Revoking deletes our key at once, so a standby need not wait for the TTL. Bounded:
        // etcd may be the thing that is gone.
        if let Some((conn, id)) = lease {
            let limit = cfg.command_timeout.min(Duration::from_secs(2));
            let mut leases = conn.client.lease_client();
            let _ = tokio::time::timeout(limit, leases.revoke(id)).await;
        }
        match end {
            RoundEnd::Stopped => return,
            RoundEnd::Resigned => {
                backoff = min_backoff;
                shared.step_down(Role::Connecting, None);
            }
            RoundEnd::Failed(why) => {
                shared.step_down(Role::Connecting, Some(why));
                // Wake early only to stop.
                let _ = tokio::time::timeout(backoff, async {
                    loop {
                        shared.wake.notified().await;
                        if shared.lock().stop {
                            return;
                        }
                    }
                })
                .await;
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
}

/// Keepalive bookkeeping: each answer renews the lease from the time its request was sent.
struct KeepAlive {
    keeper: etcd_client::LeaseKeeper,
    answers: etcd_client::LeaseKeepAliveStream,
    sent: VecDeque<Instant>,
    valid_until: Instant,
    margin: Duration,
}

impl KeepAlive {
    async fn send(&mut self) -> Result<(), String> {
        if Instant::now() >= self.valid_until {
            return Err("lease lost: etcd did not answer keepalives within the TTL".into());
        }
        self.sent.push_back(Instant::now());
        self.keeper.keep_alive().await.map_err(|e| format!("lease keepalive failed: {e}"))
    }

    fn answered(
        &mut self,
        msg: Result<Option<etcd_client::LeaseKeepAliveResponse>, etcd_client::Error>,
    ) -> Result<(), String> {
        let sent = self.sent.pop_front();
        match msg {
            Ok(Some(resp)) if resp.ttl() > 0 => {
                if let Some(sent) = sent {
                    self.valid_until = sent + Duration::from_secs(resp.ttl() as u64) - self.margin;
                }
                Ok(())
            }
            Ok(Some(_)) => Err("lease expired (etcd says it no longer exists)".into()),
            Ok(None) => Err("lease keepalive stream closed by etcd".into()),
            Err(e) => Err(format!("lease keepalive stream broke: {e}")),
        }
    }
}

/// One connection, one lease, one campaign. `lease` is set as soon as a lease exists, so the
/// caller revokes it whatever happens.
async fn round(
    shared: &Shared,
    cfg: &ConnectConfig,
    tls: Option<&TlsMaterial>,
    opts: &ElectionOptions,
    lease: &mut Option<(Connection, i64)>,
) -> RoundEnd {
    shared.update(|st| {
        st.role = Role::Connecting;
        st.resign = false;
        st.lease = None;
    });
    let mut failures = Vec::new();
    let mut conn = None;
    for endpoint in &cfg.endpoints {
        match connect_with(cfg, tls, endpoint).await {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    let Some(conn) = conn else { return RoundEnd::Failed(failures.join("; ")) };

    let ttl_secs = opts.ttl.as_secs() as i64;
    let grant_sent = Instant::now();
    let mut leases = conn.client.lease_client();
    let granted =
        match conn.unary("granting the election lease", leases.grant(ttl_secs, None)).await {
            Ok(g) => g,
            Err(e) => return RoundEnd::Failed(e.to_string()),
        };
    let lease_id = granted.id();
    let granted_ttl = Duration::from_secs(granted.ttl().max(0) as u64);
    let election_client = conn.client.election_client();
    let mut watch_client = conn.client.watch_client();
    *lease = Some((conn, lease_id));
    let conn = &lease.as_ref().expect("just set").0;
    shared.update(|st| st.lease = Some(lease_id));

    let (keeper, answers) =
        match conn.unary("starting lease keepalives", leases.keep_alive(lease_id)).await {
            Ok(k) => k,
            Err(e) => return RoundEnd::Failed(e.to_string()),
        };
    let margin = opts.margin();
    let mut ka = KeepAlive {
        keeper,
        answers,
        sent: VecDeque::new(),
        valid_until: grant_sent + granted_ttl - margin,
        margin,
    };
    let mut tick = tokio::time::interval(opts.keepalive_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; keep_alive() just renewed the lease

    // Standby: campaign (etcd answers once every older key is gone) while keeping the lease.
    let current = current_leader(conn, &opts.name).await;
    shared.update(|st| {
        st.role = Role::Standby;
        st.leader = current;
    });
    let mut campaign_client = election_client.clone();
    let campaign = campaign_client.campaign(opts.name.clone(), opts.value.clone(), lease_id);
    tokio::pin!(campaign);
    let leader_key: LeaderKey = loop {
        tokio::select! {
            r = &mut campaign => match r {
                Ok(resp) => match resp.leader() {
                    Some(k) => break k.clone(),
                    None => return RoundEnd::Failed("campaign answered without a leader key".into()),
                },
                Err(e) => return RoundEnd::Failed(format!("campaign failed: {}", conn.classify(e))),
            },
            _ = tick.tick() => {
                if let Err(e) = ka.send().await { return RoundEnd::Failed(e) }
                if let Some(l) = current_leader(conn, &opts.name).await {
                    shared.update(|st| st.leader = Some(l));
                }
            }
            msg = ka.answers.message() => if let Err(e) = ka.answered(msg) { return RoundEnd::Failed(e) },
            _ = shared.wake.notified() => {
                // Dropping the campaign future cancels the RPC; etcd then deletes our key.
                let mut st = shared.lock();
                if st.stop { return RoundEnd::Stopped }
                st.resign = false; // nothing to give up while standby
            }
        }
    };

    // etcd's campaign returns once older keys are gone; it does not recheck ours. Confirm
    // that the election's leader is our key on our lease before acting as leader.
    let mut el = election_client.clone();
    let confirmed = match conn.unary("confirming leadership", el.leader(opts.name.clone())).await {
        Ok(resp) => {
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            match resp.kv() {
                Some(kv) if kv.key() == leader_key.key() && kv.lease() == lease_id => Ok(rev),
                Some(kv) => Err(format!(
                    "campaign returned but the leader key is {} (lease {:x}), not ours",
                    String::from_utf8_lossy(kv.key()),
                    kv.lease()
                )),
                None => {
                    Err("campaign returned but the election has no leader (our key expired?)"
                        .into())
                }
            }
        }
        Err(e) => Err(e.to_string()),
    };
    let seen_at = match confirmed {
        Ok(rev) => rev,
        Err(e) => return RoundEnd::Failed(e),
    };
    // Watch our key from the confirmed revision on: a delete (by an operator, or expiry)
    // ends our term at once.
    let mut watch = match conn
        .unary(
            "watching the leader key",
            watch_client.watch(
                leader_key.key().to_vec(),
                Some(WatchOptions::new().with_start_revision(seen_at + 1)),
            ),
        )
        .await
    {
        Ok(w) => w,
        Err(e) => return RoundEnd::Failed(e.to_string()),
    };
    if Instant::now() >= ka.valid_until {
        return RoundEnd::Failed("lease lost while confirming leadership".into());
    }
    shared.update(|st| {
        if st.stop || st.resign {
            return;
        }
        st.role = Role::Leader;
        st.valid_until = Some(ka.valid_until);
        st.leader = Some(opts.value.clone());
        st.leader_since = Some(Instant::now());
        st.terms += 1;
        st.last_error = None;
    });

    let end = loop {
        {
            let st = shared.lock();
            if st.stop {
                break RoundEnd::Stopped;
            }
            if st.resign {
                break RoundEnd::Resigned;
            }
        }
        tokio::select! {
            _ = tick.tick() => if let Err(e) = ka.send().await { break RoundEnd::Failed(e) },
            msg = ka.answers.message() => match ka.answered(msg) {
                Ok(()) => {
                    let until = ka.valid_until;
                    shared.update(|st| if st.role == Role::Leader { st.valid_until = Some(until) });
                }
                Err(e) => break RoundEnd::Failed(e),
            },
            msg = watch.message() => match msg {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        break RoundEnd::Failed(format!("watch on the leader key cancelled: {}", resp.cancel_reason()));
                    }
                    if resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
                        break RoundEnd::Failed("the leader key was deleted".into());
                    }
                }
                Ok(None) => break RoundEnd::Failed("watch on the leader key closed".into()),
                Err(e) => break RoundEnd::Failed(format!("watch on the leader key broke: {e}")),
            },
            _ = shared.wake.notified() => {}
        }
    };
    // Stop trusting the lease before anything else (resign may take a while).
    shared.step_down(
        if matches!(end, RoundEnd::Stopped) { Role::Stopped } else { Role::Standby },
        None,
    );
    if !matches!(end, RoundEnd::Failed(_)) {
        let limit = cfg.command_timeout.min(Duration::from_secs(2));
        let _ = tokio::time::timeout(
            limit,
            el.resign(Some(ResignOptions::new().with_leader(leader_key))),
        )
        .await;
    }
    end
}

/// The current leader's value, if any (best effort, short timeout: it only feeds status).
async fn current_leader(conn: &Connection, name: &str) -> Option<String> {
    let mut el = conn.client.election_client();
    let limit = conn.cfg.command_timeout.min(Duration::from_secs(1));
    match tokio::time::timeout(limit, el.leader(name.to_string())).await {
        Ok(Ok(resp)) => resp.kv().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
        _ => None,
    }
}
