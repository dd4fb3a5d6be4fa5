//! The group agent: the only code that talks to etcd.
//!
//! It runs on its own thread, in a single-threaded tokio runtime (the etcd client is
//! async; the reactors never see it). Its loop:
//!
//! 1. **Register**: read the group ([`GroupView`]), [`GroupView::admit`] this peer
//!    (a clash is fatal at start: the peer exits and says why), revoke the lease of an
//!    earlier run of this same peer, grant a lease of `group.lease_ttl_s`, and put
//!    this peer's record under it in a transaction that succeeds only if the key is
//!    absent (two peers racing for one name cannot both win).
//! 2. **Campaign**: put the coordinator key under the lease if it is absent (same
//!    kind of transaction): exactly one live peer holds it; when its lease goes, the
//!    key goes with it and every peer campaigns again.
//! 3. **Watch** the group's prefix; every event (and a periodic tick) re-reads the
//!    prefix and installs the view in [`Membership`] (revision order).
//! 4. **Keep alive** the lease every third of its TTL. etcd unreachable: the state
//!    says so (group changes are frozen; I/O to single-copy pages goes on, replicated
//!    pages are served only while the lease is certainly alive: [`crate::replica::fence`]),
//!    and the agent retries; back,
//!    it keeps its lease if it is still alive, else registers again.
//! 5. **Volume changes** queued by the control thread ([`super::GroupOp`]): each is
//!    one transaction that compares the revisions it read (the volume's record, the
//!    volume-id counter), retried on a fresh read when another peer won the race.
//!    Every re-read publishes a [`super::GroupSnapshot`] for the control thread.
//! 6. **Leave** at shutdown: revoke the lease, so that the others see the peer go at
//!    once instead of a TTL later.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcdv3client::pb;
use etcdv3client::{EtcdClient, LeaseKeepAliver, Watcher};

use super::keys::{self, GroupRecord, PeerRecord};
use super::view::{Admission, Change, GroupView, Kv, Membership};
use super::{now_ms, GroupOpKind, GroupSnapshot, PeerLease, Shared};
use crate::rpc::RpcError;

/// What the agent needs to know about the group and this peer.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// etcd endpoints.
    pub endpoints: Vec<String>,
    /// Lease TTL, seconds.
    pub lease_ttl_s: u32,
    /// How long a start-up step may wait for etcd.
    pub connect_timeout: Duration,
    /// How long a replica stays out before the coordinator replaces it.
    pub replace_after: Duration,
    /// The rebalancer's configuration (the coordinator's counts).
    pub rebalance: quire_config::Rebalance,
}

/// An error of the agent: fatal (refuse to join) or transient (etcd unreachable).
#[derive(Debug)]
pub enum AgentError {
    /// The group refuses this peer (name, store or address clash).
    Refused(String),
    /// etcd did not answer or failed.
    Etcd(String),
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Refused(m) | AgentError::Etcd(m) => f.write_str(m),
        }
    }
}

/// Runs one step of the agent (a few etcd round trips) within `limit`. An etcd that
/// stops answering without closing the connection (a partition, a machine gone)
/// ends the connected stretch like an error would, and the agent connects again,
/// instead of stalling keep-alives and volume changes until TCP gives up. A step
/// cut short leaves nothing half done that the next stretch does not read back
/// from etcd first.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    step: impl std::future::Future<Output = Result<T, AgentError>>,
) -> Result<T, AgentError> {
    match tokio::time::timeout(limit, step).await {
        Ok(r) => r,
        Err(_) => Err(AgentError::Etcd(format!("{what}: no answer within {} ms", limit.as_millis()))),
    }
}

fn etcd_err(what: &str) -> impl Fn(etcdv3client::Error) -> AgentError + '_ {
    move |e| AgentError::Etcd(format!("{what}: {e}"))
}

/// Connects to etcd and reads the group once: proof that it answers.
pub async fn connect(cfg: &AgentConfig) -> Result<EtcdClient, AgentError> {
    let attempt = async {
        let mut client = EtcdClient::new(cfg.endpoints.clone(), None).await.map_err(etcd_err("connect"))?;
        read_group(&mut client).await?;
        Ok(client)
    };
    match tokio::time::timeout(cfg.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(AgentError::Etcd(format!("no answer within {} ms", cfg.connect_timeout.as_millis()))),
    }
}

/// The range request for every key under `prefix`.
fn prefix_range(prefix: &str) -> pb::RangeRequest {
    let key = prefix.as_bytes().to_vec();
    let mut end = key.clone();
    *end.last_mut().expect("a non-empty prefix") += 1;
    pb::RangeRequest { key, range_end: end, ..Default::default() }
}

/// Reads the group's keys.
async fn read_group(client: &mut EtcdClient) -> Result<GroupView, AgentError> {
    let resp = client.kv.range(prefix_range(keys::ROOT)).await.map_err(etcd_err("read the group"))?;
    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
    let kvs =
        resp.kvs.iter().map(|kv| Kv { key: &kv.key, value: &kv.value, lease: kv.lease, mod_revision: kv.mod_revision });
    Ok(GroupView::from_kvs(revision, kvs))
}

/// A transaction that puts `key = value` under `lease` only if `key` does not exist;
/// true if it did the put.
async fn put_if_absent(client: &mut EtcdClient, key: &str, value: Vec<u8>, lease: i64) -> Result<bool, AgentError> {
    let key = key.as_bytes().to_vec();
    let compare = pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
        ..Default::default()
    };
    let put = pb::PutRequest { key, value, lease, ..Default::default() };
    let txn = pb::TxnRequest {
        compare: vec![compare],
        success: vec![pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(put)) }],
        failure: vec![],
    };
    Ok(client.kv.txn(txn).await.map_err(etcd_err("transaction"))?.succeeded)
}

/// A comparison: `key`'s mod revision equals `revision` (0: the key is absent).
fn unchanged_since(key: &str, revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(pb::compare::TargetUnion::ModRevision(revision)),
        ..Default::default()
    }
}

fn put_op(key: &str, value: Vec<u8>) -> pb::RequestOp {
    let put = pb::PutRequest { key: key.as_bytes().to_vec(), value, ..Default::default() };
    pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(put)) }
}

fn delete_op(key: &str) -> pb::RequestOp {
    let del = pb::DeleteRangeRequest { key: key.as_bytes().to_vec(), ..Default::default() };
    pb::RequestOp { request: Some(pb::request_op::Request::RequestDeleteRange(del)) }
}

/// Runs `ops` if every comparison holds; true if it did.
async fn txn(client: &mut EtcdClient, compare: Vec<pb::Compare>, ops: Vec<pb::RequestOp>) -> Result<bool, AgentError> {
    let txn = pb::TxnRequest { compare, success: ops, failure: vec![] };
    Ok(client.kv.txn(txn).await.map_err(etcd_err("transaction"))?.succeeded)
}

/// How often a volume change is tried again after losing a race.
const OP_ATTEMPTS: usize = 8;

/// The agent's state between turns.
pub struct Agent {
    client: EtcdClient,
    cfg: AgentConfig,
    shared: Arc<Shared>,
    me: PeerRecord,
    membership: Membership,
    lease: Option<i64>,
    keeper: Option<LeaseKeepAliver>,
    watcher: Option<Watcher>,
    /// The `used_bytes` last published in this peer's record.
    published_used: u64,
    last_publish: Instant,
    /// Revoked leases (peer id, lease) and when this peer first saw them revoked.
    revoked_seen: std::collections::BTreeMap<(u16, i64), Instant>,
    /// Notes of the replica planner already logged.
    noted: std::collections::BTreeSet<String>,
    /// The rebuild report last published.
    published_rebuild: keys::RebuildReport,
    /// When this peer last published its load report.
    load_published_at: Option<Instant>,
    /// The rebuild progress last published, and when.
    published_copied: super::CopiedMap,
    copied_published_at: Option<Instant>,
}

impl Agent {
    /// An agent for `me`, on a client [`connect`] made.
    pub fn new(client: EtcdClient, cfg: AgentConfig, shared: Arc<Shared>, me: PeerRecord) -> Agent {
        let published_used = me.used_bytes;
        Agent {
            client,
            cfg,
            shared,
            me,
            membership: Membership::default(),
            lease: None,
            keeper: None,
            watcher: None,
            published_used,
            last_publish: Instant::now(),
            revoked_seen: std::collections::BTreeMap::new(),
            noted: std::collections::BTreeSet::new(),
            published_rebuild: keys::RebuildReport::default(),
            load_published_at: None,
            published_copied: super::CopiedMap::new(),
            copied_published_at: None,
        }
    }

    /// Registers this peer (step 1 and 2). `Refused` is final.
    pub async fn register(&mut self) -> Result<(), AgentError> {
        for _ in 0..8 {
            let view = read_group(&mut self.client).await?;
            match view.admit(&self.me) {
                Admission::Clash(why) => return Err(AgentError::Refused(why)),
                Admission::Restart { lease } => {
                    tracing::info!(lease, "taking over the registration of this peer's earlier run");
                    // Said before it is done: the coordinator must not take the earlier
                    // run's copies for gone before that run's own fence has fallen.
                    let record = keys::RevokedRecord { lease, at_ms: now_ms() };
                    let put = pb::PutRequest {
                        key: keys::revoked_key(&self.me.name).into_bytes(),
                        value: serde_json::to_vec(&record).expect("a RevokedRecord serializes"),
                        ..Default::default()
                    };
                    self.client.kv.put(put).await.map_err(etcd_err("record the revocation"))?;
                    // An already expired lease is no error: the key is gone with it.
                    let _ = self.client.lease.revoke(lease).await;
                }
                Admission::Fresh => {}
            }
            let Some(id) = self.ensure_identity(&view).await? else { continue };
            self.me.id = id;
            let ttl = i64::from(self.cfg.lease_ttl_s);
            let sent = Instant::now();
            let granted = self.client.lease.grant(ttl).await.map_err(etcd_err("grant a lease"))?;
            let lease = granted.id;
            self.me.used_bytes = self.shared.used_bytes();
            self.me.capacity_bytes = self.shared.capacity_bytes();
            if put_if_absent(&mut self.client, &keys::peer_key(&self.me.name), self.me.encode(), lease).await? {
                self.lease = Some(lease);
                // The lease lives at least `ttl` from before the grant was asked for.
                let ttl = Duration::from_secs(u64::try_from(granted.ttl.max(0)).unwrap_or(0));
                self.shared.fence.renewed(lease, sent, ttl);
                self.published_used = self.me.used_bytes;
                self.last_publish = Instant::now();
                self.keeper = Some(self.open_keeper(lease).await?);
                tracing::info!(lease, peer = %self.me.name, "registered in the group");
                self.campaign().await?;
                return Ok(());
            }
            // Someone registered the name between our read and our put: read again.
            let _ = self.client.lease.revoke(lease).await;
        }
        Err(AgentError::Refused(format!("peer name {:?}: registration raced with another peer 8 times", self.me.name)))
    }

    /// Makes sure the group has a uuid and this peer a routing id; the id, or `None`
    /// when a race with another peer means the group must be read again.
    async fn ensure_identity(&mut self, view: &GroupView) -> Result<Option<u16>, AgentError> {
        if view.group_uuid.is_none() {
            let record = GroupRecord { uuid: keys::hex16(&crate::volume::meta::random_uuid()) };
            let value = serde_json::to_vec(&record).expect("a GroupRecord serializes");
            if put_if_absent(&mut self.client, keys::GROUP, value, 0).await? {
                tracing::info!(uuid = %record.uuid, "made the group's uuid");
            }
            return Ok(None);
        }
        if let Some(id) = view.peer_id(&self.me.name) {
            return Ok(Some(id));
        }
        let id = view
            .free_peer_id()
            .ok_or_else(|| AgentError::Refused("the group has 65536 peer ids in use: no routing id left".into()))?;
        if put_if_absent(&mut self.client, &keys::peer_id_key(id), self.me.name.clone().into_bytes(), 0).await? {
            tracing::info!(peer = %self.me.name, id, "this peer's routing id in the group");
            return Ok(Some(id));
        }
        Ok(None)
    }

    /// Claims the coordinator key if nobody holds it.
    async fn campaign(&mut self) -> Result<(), AgentError> {
        let Some(lease) = self.lease else { return Ok(()) };
        if put_if_absent(&mut self.client, keys::COORDINATOR, self.me.name.as_bytes().to_vec(), lease).await? {
            tracing::info!(peer = %self.me.name, "elected coordinator of the group");
        }
        Ok(())
    }

    /// Re-reads the group, installs the view, campaigns when there is no
    /// coordinator, registers again when this peer's record is gone.
    async fn refresh(&mut self) -> Result<(), AgentError> {
        let view = read_group(&mut self.client).await?;
        let mine = view.peers.get(&self.me.name).map(|e| e.lease);
        if self.lease.is_some() && mine != self.lease {
            // Our record is gone (the lease expired while etcd was away) or another
            // incarnation took the name.
            tracing::warn!(peer = %self.me.name, "this peer's registration is gone: registering again");
            self.lease = None;
            self.keeper = None;
            return self.register().await;
        }
        let no_coordinator = view.coordinator.is_none();
        let mut leases = Vec::with_capacity(view.peers.len());
        for (name, entry) in &view.peers {
            let info = self.client.lease.get_lease_info(entry.lease, false).await.ok();
            let age_s = info.filter(|i| i.ttl >= 0).map(|i| u64::try_from(i.granted_ttl - i.ttl).unwrap_or(0));
            leases.push(PeerLease { name: name.clone(), lease: entry.lease, age_s });
        }
        self.shared.publish_snapshot(GroupSnapshot {
            generation: 0,
            me: view.peer_id(&self.me.name),
            me_lease: view.peers.get(&self.me.name).map(|e| e.lease),
            group_uuid: view.group_uuid,
            peer_ids: view.peer_ids.clone(),
            volumes: view.volumes.iter().map(|(n, (r, _))| (n.clone(), r.clone())).collect(),
            unreadable: view.unreadable_volumes.clone(),
            rebuilds: view.rebuilds.clone(),
            scrubs: view.scrubs.clone(),
            rebalance: view.rebalance.0.clone(),
            shares: self.shares(&view),
            draining: view.draining.clone(),
            loads: view.loads.clone(),
            copied: view.copied.clone(),
            live: view
                .peers
                .values()
                .map(|e| {
                    let r = &e.record;
                    let p = super::LivePeer {
                        name: r.name.clone(),
                        link: r.link.clone(),
                        target: r.target.clone(),
                        lease: e.lease,
                    };
                    (r.id, p)
                })
                .collect(),
        });
        match self.membership.install(view, now_ms()) {
            Ok(changes) => {
                for c in changes {
                    match c {
                        Change::Joined(p) => tracing::info!(peer = %p, "peer joined the group"),
                        Change::Left(p) => tracing::warn!(peer = %p, "peer left the group (lease expired or left)"),
                        Change::Updated(p) => tracing::debug!(peer = %p, "peer record updated"),
                        Change::Coordinator(c) => tracing::info!(coordinator = ?c, "coordinator changed"),
                    }
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
        self.shared.publish(&self.membership, leases);
        if no_coordinator {
            self.campaign().await?;
        }
        if self.membership.view().coordinator.as_deref() == Some(self.me.name.as_str()) {
            self.plan_replicas().await?;
        }
        self.republish_if_changed().await?;
        self.republish_load().await?;
        self.republish_copied().await?;
        self.republish_rebuild().await
    }

    /// Puts the progress of the full rebuilds this peer drives that changed, at most
    /// once a second, without a lease (the next leader resumes from it). Entries of
    /// rebuilds that ended are left for the coordinator to delete
    /// ([`Agent::clean_copied`]): a member that restarted is rebuilt again from them.
    async fn republish_copied(&mut self) -> Result<(), AgentError> {
        if self.lease.is_none() || self.copied_published_at.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return Ok(());
        }
        let now = self.shared.my_copied();
        for (k, p) in &now {
            if self.published_copied.get(k) == Some(p) {
                continue;
            }
            let value = serde_json::to_vec(p).expect("progress serializes");
            let put =
                pb::PutRequest { key: keys::copied_key(&k.0, k.1, k.2).into_bytes(), value, ..Default::default() };
            self.client.kv.put(put).await.map_err(etcd_err("publish a rebuild's progress"))?;
        }
        self.published_copied = now;
        self.copied_published_at = Some(Instant::now());
        Ok(())
    }

    /// The coordinator deletes the progress of rebuilds nobody will resume: the volume
    /// or set is gone, or the member is in sync, leaving or gone.
    async fn clean_copied(&mut self, view: &super::view::GroupView) -> Result<(), AgentError> {
        use crate::replica::set::MemberState;
        for (volume, set, member) in view.copied.keys() {
            let wanted = view
                .volumes
                .get(volume)
                .and_then(|(r, _)| r.sets.get(*set))
                .and_then(|s| s.member(*member))
                .is_some_and(|m| {
                    matches!(m.state, MemberState::Rebuild { .. } | MemberState::Out { .. } | MemberState::Reconcile)
                });
            if wanted || view.unreadable_volumes.contains(volume) {
                continue;
            }
            let del = pb::DeleteRangeRequest {
                key: keys::copied_key(volume, *set, *member).into_bytes(),
                ..Default::default()
            };
            self.client.kv.delete_range(del).await.map_err(etcd_err("delete a finished rebuild's progress"))?;
        }
        Ok(())
    }

    /// Puts this peer's rebuild report when it changed (under its lease: it goes with
    /// the peer); deletes it when nothing is being rebuilt.
    /// Puts this peer's load report (`volume::load`) under its lease, every 5 s.
    async fn republish_load(&mut self) -> Result<(), AgentError> {
        let Some(lease) = self.lease else { return Ok(()) };
        if self.load_published_at.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
            return Ok(());
        }
        let value = serde_json::to_vec(&self.shared.load_report()).expect("a report serializes");
        let put =
            pb::PutRequest { key: keys::load_key(&self.me.name).into_bytes(), value, lease, ..Default::default() };
        self.client.kv.put(put).await.map_err(etcd_err("publish this peer's load report"))?;
        self.load_published_at = Some(Instant::now());
        Ok(())
    }

    async fn republish_rebuild(&mut self) -> Result<(), AgentError> {
        let Some(lease) = self.lease else { return Ok(()) };
        let report = self.shared.rebuild_report();
        if report == self.published_rebuild {
            return Ok(());
        }
        let key = keys::rebuild_key(&self.me.name).into_bytes();
        if report.volumes.is_empty() {
            let del = pb::DeleteRangeRequest { key, ..Default::default() };
            self.client.kv.delete_range(del).await.map_err(etcd_err("delete this peer's rebuild report"))?;
        } else {
            let value = serde_json::to_vec(&report).expect("a report serializes");
            let put = pb::PutRequest { key, value, lease, ..Default::default() };
            self.client.kv.put(put).await.map_err(etcd_err("publish this peer's rebuild report"))?;
        }
        self.published_rebuild = report;
        Ok(())
    }

    /// The coordinator's turn at the replica sets (`replica::plan`): evictions,
    /// admissions, replacements, replication factors. Each changed volume is one
    /// transaction against the revision read; a lost race is planned again on the
    /// next read.
    async fn plan_replicas(&mut self) -> Result<(), AgentError> {
        use crate::replica::plan::{plan_with_notes, PlanInput};
        let view = self.membership.view().clone();
        self.clean_copied(&view).await?;
        let peers = self.plan_peers(&view);
        let now = Instant::now();
        let now_ms = now_ms();
        for (name, r) in &view.revoked {
            if let Some(id) = view.peer_id(name) {
                self.revoked_seen.entry((id, r.lease)).or_insert(now);
            }
        }
        let revoked: std::collections::BTreeMap<(u16, i64), u64> = self
            .revoked_seen
            .iter()
            .map(|(&k, &seen)| {
                (k, now_ms.saturating_sub(u64::try_from(now.duration_since(seen).as_millis()).unwrap_or(0)))
            })
            .collect();
        let mut changed = false;
        let input = PlanInput {
            now_ms,
            ttl_ms: u64::from(self.cfg.lease_ttl_s) * 1000,
            replace_after_ms: u64::try_from(self.cfg.replace_after.as_millis()).unwrap_or(u64::MAX),
            peers: &peers,
            revoked: &revoked,
        };
        for (name, (record, revision)) in &view.volumes {
            let (next, why, notes) = plan_with_notes(record, &input);
            for n in notes {
                if self.noted.insert(format!("{name}: {n}")) {
                    tracing::warn!(volume = %name, "{n}");
                }
            }
            let Some(next) = next else { continue };
            changed = true;
            let compare = vec![unchanged_since(&keys::volume_key(name), *revision)];
            if txn(&mut self.client, compare, vec![put_op(&keys::volume_key(name), next.encode())]).await? {
                for w in &why {
                    tracing::info!(volume = %name, epoch = next.epoch, "replicas: {w}");
                }
            }
        }
        if !changed {
            // On records the plan left as they are (a changed one is read again first).
            self.rebalance(&view, &input).await?;
        }
        Ok(())
    }

    /// What the plan knows of every peer, live or gone, by routing id.
    fn plan_peers(&self, view: &GroupView) -> std::collections::BTreeMap<u16, crate::replica::plan::PeerInfo> {
        use crate::replica::plan::PeerInfo;
        let mut peers = std::collections::BTreeMap::new();
        for g in self.membership.gone().values() {
            let r = &g.record;
            let draining = view.draining.contains(&r.name);
            peers.insert(r.id, PeerInfo { lease: None, weight: r.weight, boot: r.boot.clone(), draining });
        }
        for e in view.peers.values() {
            if let Some(id) = view.peer_id(&e.record.name) {
                peers.insert(
                    id,
                    PeerInfo {
                        lease: Some(e.lease),
                        weight: e.record.weight,
                        boot: e.record.boot.clone(),
                        draining: view.draining.contains(&e.record.name),
                    },
                );
            }
        }
        peers
    }

    /// Every peer's share of the group's copies, by name.
    fn shares(&self, view: &GroupView) -> Vec<(String, crate::replica::rebalance::Share)> {
        let peers = self.plan_peers(view);
        let none = std::collections::BTreeMap::new();
        let input = crate::replica::plan::PlanInput {
            now_ms: 0,
            ttl_ms: 0,
            replace_after_ms: 0,
            peers: &peers,
            revoked: &none,
        };
        let volumes = view.volumes.iter().map(|(n, (r, _))| (n.clone(), r.clone())).collect();
        let spread = crate::replica::rebalance::spread(&volumes, &input);
        spread
            .peers
            .into_values()
            .map(|s| (view.peer_ids.get(&s.peer).cloned().unwrap_or_else(|| format!("#{}", s.peer)), s))
            .collect()
    }

    /// The coordinator's rebalancer (`replica::rebalance`): starts at most one move,
    /// and keeps its last word in the rebalance record.
    async fn rebalance(
        &mut self,
        view: &GroupView,
        input: &crate::replica::plan::PlanInput<'_>,
    ) -> Result<(), AgentError> {
        use crate::replica::rebalance::{decide_with, Decision, LoadInput, Policy};
        let cfg = &self.cfg.rebalance;
        let (record, revision) = &view.rebalance;
        let policy = Policy {
            enabled: cfg.enabled,
            paused: record.paused,
            tolerance_pct: cfg.tolerance_pct,
            moves_max: usize::try_from(cfg.moves_max).unwrap_or(usize::MAX),
            batch_max: usize::try_from(cfg.batch_pages).unwrap_or(usize::MAX),
        };
        let volumes = view.volumes.iter().map(|(n, (r, _))| (n.clone(), r.clone())).collect();
        // The peers' load reports: each one's rate and hottest pages, by routing id.
        let mut loads = LoadInput {
            last_move_ms: record.history.iter().rev().find(|m| m.load).map(|m| m.at_ms),
            tolerance_pct: cfg.load_tolerance_pct,
            min_milli: u64::from(cfg.load_min_iops) * 1000,
            every_ms: u64::from(cfg.load_interval_s) * 1000,
            ..LoadInput::default()
        };
        for (name, report) in &view.loads {
            let Some(id) = view.peer_id(name) else { continue };
            loads.ops_milli.insert(id, report.ops_milli);
            let mut hot: Vec<(String, u64, u64)> = report
                .volumes
                .iter()
                .flat_map(|(v, l)| l.top.iter().map(move |&(page, ops, _)| (v.clone(), page, ops)))
                .collect();
            hot.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, a.1).cmp(&(&b.0, b.1))));
            loads.hot.insert(id, hot);
        }
        let mut next = keys::RebalanceRecord {
            enabled: cfg.enabled,
            tolerance_pct: cfg.tolerance_pct,
            moves_max: cfg.moves_max,
            ..record.clone()
        };
        let mut compare = vec![unchanged_since(keys::REBALANCE, *revision)];
        let mut ops = Vec::new();
        let mut log = None;
        let decision = decide_with(&volumes, input, &policy, &loads);
        let peer_name = |id: u16| view.peer_ids.get(&id).cloned().unwrap_or_else(|| format!("peer #{id}"));
        let (decision, candidate) =
            crate::replica::rebalance::confirm_load(decision, record.load_candidate.as_ref(), input.now_ms, peer_name);
        next.load_candidate = candidate;
        match decision {
            Decision::Idle(why) => next.state = why,
            Decision::Move { volume, pages, from, to: (to, to_inc), load } => {
                let (old, vrev) = &view.volumes[&volume];
                let start = crate::replica::migration::start_pages(
                    old,
                    &pages,
                    Some(from.peer),
                    (to.peer, to_inc),
                    input.now_ms,
                );
                let moved = match start {
                    Ok(r) => r,
                    Err(e) => {
                        // The plan's checks and start_page's agree; a refusal is a bug
                        // to see in the log, not a reason to stop.
                        tracing::warn!(volume = %volume, ?pages, "rebalancer: the move was refused: {e}");
                        return Ok(());
                    }
                };
                let name = |id: u16| view.peer_ids.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
                let (from_name, to_name) = (name(from.peer), name(to.peer));
                let (page, count) = (pages[0], pages.len() as u64);
                let why = match &load {
                    Some(l) => crate::replica::rebalance::explain_load(&from_name, &to_name, (&volume, page), l),
                    None => crate::replica::rebalance::explain((&from_name, &from), (&to_name, &to)),
                };
                let entry = keys::RebalanceMove {
                    at_ms: input.now_ms,
                    volume: volume.clone(),
                    page,
                    pages: count,
                    from: from_name,
                    to: to_name,
                    why: why.clone(),
                    load: load.is_some(),
                };
                let what = if count == 1 { format!("page {page}") } else { format!("{count} pages from page {page}") };
                next.state = format!("moving {what} of {volume} from {} to {}: {why}", entry.from, entry.to);
                next.history.push(entry);
                let drop = next.history.len().saturating_sub(keys::REBALANCE_HISTORY_MAX);
                next.history.drain(..drop);
                compare.push(unchanged_since(&keys::volume_key(&volume), *vrev));
                ops.push(put_op(&keys::volume_key(&volume), moved.encode()));
                log = Some(next.state.clone());
            }
        }
        if next == *record && ops.is_empty() {
            return Ok(());
        }
        ops.push(put_op(keys::REBALANCE, serde_json::to_vec(&next).expect("a record serializes")));
        if txn(&mut self.client, compare, ops).await? {
            if let Some(line) = log {
                tracing::info!("rebalancer: {line}");
            }
        }
        Ok(())
    }

    /// Puts this peer's record again when its capacity use changed (at most every 5 s).
    async fn republish_if_changed(&mut self) -> Result<(), AgentError> {
        let used = self.shared.used_bytes();
        let Some(lease) = self.lease else { return Ok(()) };
        if used == self.published_used || self.last_publish.elapsed() < Duration::from_secs(5) {
            return Ok(());
        }
        self.me.used_bytes = used;
        self.me.capacity_bytes = self.shared.capacity_bytes();
        let put = pb::PutRequest {
            key: keys::peer_key(&self.me.name).into_bytes(),
            value: self.me.encode(),
            lease,
            ..Default::default()
        };
        self.client.kv.put(put).await.map_err(etcd_err("update this peer's record"))?;
        self.published_used = used;
        self.last_publish = Instant::now();
        Ok(())
    }

    /// Opens the keep-alive stream of `lease`. Opening it sends a first keep-alive
    /// whose answer is read here: left in the stream, every later answer would be
    /// taken for the next request's, and the fence counted from a keep-alive etcd
    /// had not seen yet (up to a third of the TTL past the lease's real end).
    async fn open_keeper(&mut self, lease: i64) -> Result<LeaseKeepAliver, AgentError> {
        let sent = Instant::now();
        let mut keeper = self.client.lease.keep_alive(lease).await.map_err(etcd_err("keep the lease alive"))?;
        match tokio::time::timeout(self.cfg.connect_timeout, keeper.message()).await {
            Ok(Ok(Some(resp))) if resp.ttl > 0 => {
                let ttl = Duration::from_secs(u64::try_from(resp.ttl).unwrap_or(0));
                self.shared.fence.renewed(lease, sent, ttl);
                Ok(keeper)
            }
            Ok(Ok(Some(_))) => {
                self.shared.fence.drop_right();
                Err(AgentError::Etcd("keep-alive: the lease has expired".into()))
            }
            Ok(Ok(None)) => Err(AgentError::Etcd("keep-alive stream closed".into())),
            Ok(Err(e)) => Err(AgentError::Etcd(format!("keep-alive: {e}"))),
            Err(_) => Err(AgentError::Etcd("keep-alive: no answer".into())),
        }
    }

    /// One keep-alive round trip; false when the lease has expired. An answer renews
    /// this peer's right to serve replicated pages ([`crate::replica::fence`]), counted
    /// from when the keep-alive was sent.
    async fn keep_alive(&mut self) -> Result<bool, AgentError> {
        let Some(keeper) = self.keeper.as_mut() else { return Ok(false) };
        let sent = Instant::now();
        keeper.keep_alive().await.map_err(etcd_err("keep-alive"))?;
        let answer = tokio::time::timeout(self.cfg.connect_timeout, keeper.message()).await;
        match answer {
            Ok(Ok(Some(resp))) if resp.ttl > 0 => {
                if let Some(lease) = self.lease {
                    let ttl = Duration::from_secs(u64::try_from(resp.ttl).unwrap_or(0));
                    self.shared.fence.renewed(lease, sent, ttl);
                }
                Ok(true)
            }
            Ok(Ok(Some(_))) => {
                self.shared.fence.drop_right();
                Ok(false)
            }
            Ok(Ok(None)) => Err(AgentError::Etcd("keep-alive stream closed".into())),
            Ok(Err(e)) => Err(AgentError::Etcd(format!("keep-alive: {e}"))),
            Err(_) => Err(AgentError::Etcd("keep-alive: no answer".into())),
        }
    }

    /// How long one step of the agent may take: two connect timeouts.
    fn step_limit(&self) -> Duration {
        self.cfg.connect_timeout * 2
    }

    /// One connected stretch: watch, refresh, keep alive, until an etcd error, a step
    /// that took longer than [`Self::step_limit`], or the stop flag.
    async fn connected(&mut self) -> Result<(), AgentError> {
        let limit = self.step_limit();
        if self.lease.is_none() {
            bounded(limit, "register", self.register()).await?;
        } else if self.keeper.is_none() {
            let lease = self.lease.expect("checked");
            let info = bounded(limit, "lease info", async {
                self.client.lease.get_lease_info(lease, false).await.map_err(etcd_err("lease info"))
            })
            .await?;
            if info.ttl > 0 {
                self.keeper = Some(bounded(limit, "keep-alive", self.open_keeper(lease)).await?);
            } else {
                tracing::warn!(lease, "this peer's lease expired while etcd was unreachable: registering again");
                self.lease = None;
                bounded(limit, "register", self.register()).await?;
            }
        }
        let watch = async { self.client.watch.watch_prefix(keys::ROOT).await.map_err(etcd_err("watch the group")) };
        self.watcher = Some(bounded(limit, "watch", watch).await?);
        bounded(limit, "refresh", self.refresh()).await?;
        self.shared.set_etcd_ok();
        // Changes queued while etcd was away or before registration.
        self.run_ops().await?;
        let keep_every = Duration::from_millis(u64::from(self.cfg.lease_ttl_s) * 1000 / 3);
        let mut keep_tick = tokio::time::interval(keep_every);
        let mut refresh_tick = tokio::time::interval(Duration::from_secs(1));
        let mut stop_tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            let watcher = self.watcher.as_mut().expect("set above");
            tokio::select! {
                _ = keep_tick.tick() => {
                    if !bounded(limit, "keep-alive", self.keep_alive()).await? {
                        tracing::warn!("this peer's lease expired: registering again");
                        self.lease = None;
                        self.keeper = None;
                        bounded(limit, "register", self.register()).await?;
                    }
                }
                msg = watcher.message() => {
                    match msg {
                        Ok(Some(_)) => bounded(limit, "refresh", self.refresh()).await?,
                        Ok(None) => return Err(AgentError::Etcd("watch stream closed".into())),
                        Err(e) => return Err(AgentError::Etcd(format!("watch: {e}"))),
                    }
                }
                _ = refresh_tick.tick() => bounded(limit, "refresh", self.refresh()).await?,
                _ = self.shared.ops_ready.notified() => self.run_ops().await?,
                _ = stop_tick.tick() => {
                    if self.shared.stopping() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Runs every queued volume change; an etcd error ends the turn (the change that
    /// met it is answered with it, the rest wait for etcd).
    async fn run_ops(&mut self) -> Result<(), AgentError> {
        let limit = self.step_limit();
        while let Some(op) = self.shared.next_op() {
            // Bounded here, not around the whole turn: the change taken from the queue
            // is always answered.
            match bounded(limit, "volume change", self.execute(&op.kind)).await {
                Ok(Ok(name)) => {
                    // Read back what was written before answering, so that the control
                    // thread reconciles it before it replies.
                    let refreshed = bounded(limit, "refresh", self.refresh()).await;
                    self.shared.answer(op.ticket, Ok(name));
                    refreshed?;
                }
                Ok(Err(e)) => self.shared.answer(op.ticket, Err(e)),
                Err(e) => {
                    self.shared.answer(op.ticket, Err(frozen(&e)));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// One volume change: the volume's name, a refusal, or an etcd error.
    async fn execute(&mut self, op: &GroupOpKind) -> Result<Result<String, RpcError>, AgentError> {
        for _ in 0..OP_ATTEMPTS {
            let view = read_group(&mut self.client).await?;
            let (compare, ops) = match op {
                op if view.unreadable_volumes.contains(op.volume()) => {
                    let name = op.volume();
                    return Ok(Err(RpcError::invalid_state(format!(
                        "the group's record of volume {name:?} does not read (see `quire group status`): not changed"
                    ))));
                }
                GroupOpKind::Create { name, num_pages, page_size, block_size, replicas } => {
                    if view.volumes.contains_key(name) {
                        return Ok(Err(RpcError::already_exists(format!("volume {name:?} exists in the group"))));
                    }
                    let r = match view.new_volume(name, *num_pages, (*page_size, *block_size), *replicas) {
                        Ok(r) => r,
                        Err(e) => return Ok(Err(RpcError::invalid_state(e))),
                    };
                    let next = r.id.checked_add(1).ok_or_else(|| AgentError::Etcd("volume ids exhausted".into()))?;
                    (
                        vec![
                            unchanged_since(&keys::volume_key(name), 0),
                            unchanged_since(keys::NEXT_VOLUME_ID, view.next_volume_id.1),
                        ],
                        vec![
                            put_op(&keys::volume_key(name), r.encode()),
                            put_op(keys::NEXT_VOLUME_ID, next.to_string().into_bytes()),
                        ],
                    )
                }
                GroupOpKind::Grow { name, num_pages } => {
                    let Some((old, _)) = view.volumes.get(name) else {
                        return Ok(Err(RpcError::not_found(format!("no volume named {name:?}"))));
                    };
                    if *num_pages <= old.num_pages {
                        let size = old.num_pages * old.page_size;
                        return Ok(Err(RpcError::invalid_params(format!(
                            "the size must exceed the current size {size}"
                        ))));
                    }
                    let (r, revision) = match view.grown_volume(name, *num_pages) {
                        Ok(g) => g,
                        Err(e) => return Ok(Err(RpcError::invalid_state(e))),
                    };
                    (
                        vec![unchanged_since(&keys::volume_key(name), revision)],
                        vec![put_op(&keys::volume_key(name), r.encode())],
                    )
                }
                GroupOpKind::Delete { name } => {
                    let Some((_, revision)) = view.volumes.get(name) else {
                        return Ok(Err(RpcError::not_found(format!("no volume named {name:?}"))));
                    };
                    (
                        vec![unchanged_since(&keys::volume_key(name), *revision)],
                        vec![delete_op(&keys::volume_key(name)), delete_op(&keys::scrub_key(name))],
                    )
                }
                GroupOpKind::SetReplicas { name, replicas } => {
                    let Some((old, revision)) = view.volumes.get(name) else {
                        return Ok(Err(RpcError::not_found(format!("no volume named {name:?}"))));
                    };
                    if let Err(e) = super::view::check_replicas(*replicas, &view) {
                        return Ok(Err(RpcError::invalid_params(e)));
                    }
                    let mut r = old.clone();
                    r.replicas = *replicas;
                    (
                        vec![unchanged_since(&keys::volume_key(name), *revision)],
                        vec![put_op(&keys::volume_key(name), r.encode())],
                    )
                }
                GroupOpKind::SetLimits { name, set } => {
                    let Some((old, revision)) = view.volumes.get(name) else {
                        return Ok(Err(RpcError::not_found(format!("no volume named {name:?}"))));
                    };
                    let mut r = old.clone();
                    r.limits = set.apply(old.limits);
                    (
                        vec![unchanged_since(&keys::volume_key(name), *revision)],
                        vec![put_op(&keys::volume_key(name), r.encode())],
                    )
                }
                GroupOpKind::Promote { name, set, peer, inc } => {
                    let Some((old, revision)) = view.volumes.get(name) else {
                        return Ok(Err(RpcError::not_found(format!("no volume named {name:?}"))));
                    };
                    let me = view.peer_id(&self.me.name);
                    let ok = old.sets.get(*set).is_some_and(|s| {
                        Some(s.leader) == me
                            && s.member(s.leader).is_some_and(|l| Some(l.inc) == self.lease)
                            && s.member(*peer).is_some_and(|m| {
                                m.inc == *inc
                                    && matches!(
                                        m.state,
                                        crate::replica::set::MemberState::Rebuild { .. }
                                            | crate::replica::set::MemberState::Reconcile
                                    )
                            })
                    });
                    if !ok {
                        return Ok(Err(RpcError::invalid_state(format!(
                            "volume {name:?} set {set}: this peer no longer leads it, or member {peer} changed"
                        ))));
                    }
                    let mut r = old.clone();
                    let s = &mut r.sets[*set];
                    let k = s.members.iter().position(|m| m.peer == *peer).expect("checked");
                    s.members[k].state = crate::replica::set::MemberState::Sync;
                    r.epoch += 1;
                    (
                        vec![unchanged_since(&keys::volume_key(name), *revision)],
                        vec![put_op(&keys::volume_key(name), r.encode())],
                    )
                }
                GroupOpKind::MovePage { name, page, from, to } => {
                    let Some((old, revision)) = view.volumes.get(name) else {
                        return Ok(Err(RpcError::not_found(format!("no volume named {name:?}"))));
                    };
                    let Some(to_id) = view.peer_id(to) else {
                        return Ok(Err(RpcError::not_found(format!("no peer named {to:?} in the group"))));
                    };
                    let Some(to_lease) = view.peers.get(to).map(|e| e.lease) else {
                        return Ok(Err(RpcError::invalid_state(format!("peer {to:?} is not live"))));
                    };
                    if view.draining.contains(to) {
                        return Ok(Err(RpcError::invalid_state(format!("peer {to:?} is being drained"))));
                    }
                    let from_id = match from {
                        None => None,
                        Some(f) => match view.peer_id(f) {
                            Some(id) => Some(id),
                            None => return Ok(Err(RpcError::not_found(format!("no peer named {f:?} in the group")))),
                        },
                    };
                    let r =
                        match crate::replica::migration::start_page(old, *page, from_id, (to_id, to_lease), now_ms()) {
                            Ok(r) => r,
                            Err(e) => return Ok(Err(RpcError::invalid_state(format!("page {page} of {name:?}: {e}")))),
                        };
                    (
                        vec![unchanged_since(&keys::volume_key(name), *revision)],
                        vec![put_op(&keys::volume_key(name), r.encode())],
                    )
                }
                GroupOpKind::CancelMove { name, id } => {
                    let Some((old, revision)) = view.volumes.get(name) else {
                        return Ok(Err(RpcError::not_found(format!("no volume named {name:?}"))));
                    };
                    let r = match crate::replica::migration::cancel(old, *id) {
                        Ok(r) => r,
                        Err(e) => return Ok(Err(RpcError::invalid_state(e))),
                    };
                    (
                        vec![unchanged_since(&keys::volume_key(name), *revision)],
                        vec![put_op(&keys::volume_key(name), r.encode())],
                    )
                }
                GroupOpKind::Drain { peer, on } => {
                    if view.peer_id(peer).is_none() {
                        return Ok(Err(RpcError::not_found(format!("no peer named {peer:?} in the group"))));
                    }
                    let key = keys::drain_key(peer);
                    (Vec::new(), vec![if *on { put_op(&key, b"{}".to_vec()) } else { delete_op(&key) }])
                }
                GroupOpKind::RemovePeer { peer } => {
                    let Some(id) = view.peer_id(peer) else {
                        return Ok(Err(RpcError::not_found(format!("no peer named {peer:?} in the group"))));
                    };
                    if view.peers.contains_key(peer) {
                        return Ok(Err(RpcError::invalid_state(format!(
                            "peer {peer:?} is live: drain it (quire peer drain), stop it, then remove it"
                        ))));
                    }
                    let holding: Vec<&str> = view
                        .volumes
                        .iter()
                        .filter(|(_, (r, _))| r.sets.iter().any(|s| s.member(id).is_some()))
                        .map(|(n, _)| n.as_str())
                        .collect();
                    if !holding.is_empty() {
                        return Ok(Err(RpcError::invalid_state(format!(
                            "peer {peer:?} still holds copies of pages of {}: drain it first (quire peer drain {peer})",
                            holding.join(", ")
                        ))));
                    }
                    // Nobody registered under the name meanwhile (no set takes a copy on a
                    // peer that is not live, so none can name it since this read).
                    let compare = vec![unchanged_since(&keys::peer_key(peer), 0)];
                    let ops = vec![
                        delete_op(&keys::peer_id_key(id)),
                        delete_op(&keys::drain_key(peer)),
                        delete_op(&keys::revoked_key(peer)),
                        delete_op(&keys::rebuild_key(peer)),
                    ];
                    (compare, ops)
                }
                GroupOpKind::SetCopyRates { rebuild, migration, scrub } => {
                    let range = quire_config::validate::COPY_MB_S;
                    for (key, v) in [("rebuild_mb_s", rebuild), ("migration_mb_s", migration), ("scrub_mb_s", scrub)] {
                        if let Some(v) = *v {
                            if v != 0 && !range.contains(&v) {
                                return Ok(Err(RpcError::invalid_params(format!(
                                    "{key}: {v} MB/s; {}..={} allowed, or 0 for each peer's configuration",
                                    range.start(),
                                    range.end()
                                ))));
                            }
                        }
                    }
                    let (record, revision) = &view.rebalance;
                    let old = record.copy_mb_s;
                    let copy_mb_s = keys::CopyRates {
                        rebuild: rebuild.unwrap_or(old.rebuild),
                        migration: migration.unwrap_or(old.migration),
                        scrub: scrub.unwrap_or(old.scrub),
                    };
                    let next = keys::RebalanceRecord { copy_mb_s, ..record.clone() };
                    (
                        vec![unchanged_since(keys::REBALANCE, *revision)],
                        vec![put_op(keys::REBALANCE, serde_json::to_vec(&next).expect("a record serializes"))],
                    )
                }
                GroupOpKind::PauseRebalance { paused } => {
                    let (record, revision) = &view.rebalance;
                    let next = keys::RebalanceRecord { paused: *paused, ..record.clone() };
                    (
                        vec![unchanged_since(keys::REBALANCE, *revision)],
                        vec![put_op(keys::REBALANCE, serde_json::to_vec(&next).expect("a record serializes"))],
                    )
                }
                GroupOpKind::Pin { name, page, on } => {
                    let Some((old, revision)) = view.volumes.get(name) else {
                        return Ok(Err(RpcError::not_found(format!("no volume named {name:?}"))));
                    };
                    if *page >= old.num_pages {
                        return Ok(Err(RpcError::invalid_params(format!(
                            "volume {name:?} has {} pages: no page {page}",
                            old.num_pages
                        ))));
                    }
                    let mut r = old.clone();
                    match (r.pinned.binary_search(page), on) {
                        (Err(at), true) => r.pinned.insert(at, *page),
                        (Ok(at), false) => {
                            r.pinned.remove(at);
                        }
                        // Pinned already, or not pinned: nothing to change.
                        _ => return Ok(Ok(name.clone())),
                    }
                    (
                        vec![unchanged_since(&keys::volume_key(name), *revision)],
                        vec![put_op(&keys::volume_key(name), r.encode())],
                    )
                }
                GroupOpKind::Scrub { name } => {
                    let Some((_, revision)) = view.volumes.get(name) else {
                        return Ok(Err(RpcError::not_found(format!("no volume named {name:?}"))));
                    };
                    let previous = view.scrubs.get(name).copied().unwrap_or(0);
                    let request = keys::ScrubRequest { id: now_ms().max(previous + 1) };
                    (
                        vec![unchanged_since(&keys::volume_key(name), *revision)],
                        vec![put_op(&keys::scrub_key(name), serde_json::to_vec(&request).expect("serializes"))],
                    )
                }
            };
            if txn(&mut self.client, compare, ops).await? {
                let name = op.volume();
                tracing::info!(volume = %name, ?op, "group volume changed");
                return Ok(Ok(name.to_string()));
            }
            // Another peer changed the volume (or made one) between our read and our
            // transaction: read again and decide again.
        }
        Ok(Err(RpcError::server_busy(format!(
            "the change lost {OP_ATTEMPTS} races with other peers' changes; try again"
        ))))
    }

    /// Answers every queued change with the etcd error (group changes are frozen).
    fn refuse_ops(&self, why: &str) {
        while let Some(op) = self.shared.next_op() {
            self.shared.answer(op.ticket, Err(frozen(&AgentError::Etcd(why.to_string()))));
        }
    }

    /// Runs until the stop flag: reconnects after every etcd error, then leaves the
    /// group.
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(200);
        while !self.shared.stopping() {
            match self.connected().await {
                Ok(()) => break,
                Err(AgentError::Refused(why)) => {
                    // A clash found after start (e.g. our lease expired and another
                    // peer took our name meanwhile): stay out, say so.
                    tracing::error!("the group refuses this peer: {why}");
                    self.shared.set_etcd_error(format!("refused: {why}"));
                }
                Err(AgentError::Etcd(e)) => {
                    tracing::warn!(
                        "etcd: {e}; group changes are frozen until it is back (I/O to single-copy pages goes on; \
                         replicated pages are served until 0.9 of the lease TTL after the last keep-alive)"
                    );
                    self.shared.set_etcd_error(e);
                }
            }
            self.keeper = None;
            self.watcher = None;
            let why = self.shared.state().etcd_error.clone().unwrap_or_default();
            let deadline = Instant::now() + backoff;
            while Instant::now() < deadline && !self.shared.stopping() {
                self.refuse_ops(&why);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
            // The connection may be broken for good: make a new one.
            if let Ok(client) = connect(&self.cfg).await {
                self.client = client;
            }
        }
        // Nothing replicated is served from here on: the others may take over as soon
        // as the lease is gone.
        self.shared.fence.drop_right();
        if let Some(lease) = self.lease {
            let revoke = self.client.lease.revoke(lease);
            match tokio::time::timeout(Duration::from_secs(1), revoke).await {
                Ok(Ok(())) => tracing::info!(peer = %self.me.name, "left the group"),
                _ => tracing::warn!("could not revoke the lease at shutdown: the group sees this peer go a TTL later"),
            }
        }
    }
}

/// The answer to a volume change while etcd fails.
fn frozen(e: &AgentError) -> RpcError {
    RpcError::invalid_state(format!("etcd: {e}; group changes are frozen until etcd is back"))
}
