//! Redis Cluster, one node at a time: which primary holds each hash slot, and a connection pool
//! of Sluice's own to each primary, so that one node's outage costs only the tenants whose slots
//! it holds.
//!
//! Why not only the cluster client: a Redis client that speaks Cluster (fred's) runs every
//! command of a connection set through one router task, and when one node stops answering, that
//! router reconnects and re-reads the topology — while it does, commands to the healthy nodes wait
//! too, and the whole counter step misses its deadline. So script calls go to a plain
//! (centralized) pool per primary, chosen by slot; a node that fails stalls only its own pool.
//! The cluster client is kept for what it is good at: the first view of the topology, and calls
//! for a slot whose owner is not known yet.
//!
//! The table of slot owners is a sorted list read with one atomic load and a binary search. A
//! background task re-reads `CLUSTER SLOTS` from a node that answers every [`REFRESH_EVERY`] (and
//! at once when a call was redirected), so after a failover the failed primary's tenants map to
//! the promoted replica — with its own pool and its own, closed, circuit breaker.

use std::sync::{
    Arc, Weak,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;

use arc_swap::ArcSwap;
use fred::clients::Client;
use fred::interfaces::{ClientLike, ClusterInterface};
use fred::prelude::{Builder, Pool, ServerConfig};
use fred::types::Value;
use fred::types::config::{Options, Server};
use tokio::sync::Notify;

use super::Shard;

/// How often the topology is re-read without being asked to.
pub(super) const REFRESH_EVERY: Duration = Duration::from_millis(500);
/// How long one node may take to answer `CLUSTER SLOTS` before the next is asked.
const ASK_TIMEOUT: Duration = Duration::from_millis(300);

/// One primary: its `host:port` (the breaker's key) and Sluice's pool to it.
#[derive(Debug)]
struct Node {
    name: Arc<str>,
    pool: Pool,
}

/// Which primary holds each slot range, sorted by the first slot.
#[derive(Debug, Default)]
struct Table {
    ranges: Vec<(u16, u16, Arc<Node>)>,
}

impl Table {
    fn owner(&self, slot: u16) -> Option<&Arc<Node>> {
        let after = self.ranges.partition_point(|(start, _, _)| *start <= slot);
        match after.checked_sub(1).map(|i| &self.ranges[i]) {
            Some((_, end, node)) if slot <= *end => Some(node),
            _ => None,
        }
    }

    fn node_named(&self, name: &str) -> Option<&Arc<Node>> {
        self.ranges
            .iter()
            .map(|(_, _, node)| node)
            .find(|node| &*node.name == name)
    }
}

/// The primaries of one cluster and the slots each holds.
#[derive(Debug)]
pub(super) struct ClusterNodes {
    /// The cluster client: a template for the node pools, and the first topology.
    cluster: Pool,
    table: ArcSwap<Table>,
    /// Wakes the refresher before its next round (a call was redirected).
    refresh_now: Arc<Notify>,
    /// The per-call timeout of every node pool (see `RedisCounter::set_command_timeout`), in ms.
    command_timeout_ms: AtomicU64,
}

impl ClusterNodes {
    /// Starts with the topology the cluster client read when it connected (if it did), and a
    /// task that keeps it current for as long as the returned value lives.
    pub(super) fn start(cluster: Pool, command_timeout: Duration) -> Arc<Self> {
        let nodes = Arc::new(Self {
            cluster,
            table: ArcSwap::from_pointee(Table::default()),
            refresh_now: Arc::new(Notify::new()),
            command_timeout_ms: AtomicU64::new(command_timeout.as_millis() as u64),
        });
        if let Some(routing) = nodes.cluster.next().cached_cluster_state() {
            let owners = routing
                .slots()
                .iter()
                .map(|range| (range.start, range.end, range.primary.clone()))
                .collect();
            nodes.install(owners);
        }
        tokio::spawn(keep_current(
            Arc::downgrade(&nodes),
            Arc::clone(&nodes.refresh_now),
        ));
        nodes
    }

    /// The primary holding `tenant`'s keys (their hash tag is the tenant); the whole store while
    /// the slot's owner is not known.
    pub(super) fn shard_of(&self, tenant: &str) -> Shard {
        match self
            .table
            .load()
            .owner(fred::util::redis_keyslot(tenant.as_bytes()))
        {
            Some(node) => Shard::Node(Arc::clone(&node.name)),
            None => Shard::Whole,
        }
    }

    /// A client of the pool of the primary holding `slot`; the cluster client while its owner is
    /// not known.
    pub(super) fn client_for(&self, slot: u16) -> Client {
        match self.table.load().owner(slot) {
            Some(node) => node.pool.next().clone(),
            None => self.cluster.next_connected().clone(),
        }
    }

    /// Whether the primary `host:port` holds slots in the current table.
    pub(super) fn holds_slots(&self, node: &str) -> bool {
        self.table.load().node_named(node).is_some()
    }

    /// A client of the pool of the primary `host:port` (as a `MOVED` reply names it), if it is a
    /// primary of the table; else the cluster client, which follows redirections itself.
    pub(super) fn client_named(&self, node: &str) -> Client {
        match self.table.load().node_named(node) {
            Some(node) => node.pool.next().clone(),
            None => self.cluster.next_connected().clone(),
        }
    }

    /// One client per primary of the table (for the health ping); empty while the topology is
    /// not known.
    pub(super) fn primary_clients(&self) -> Vec<Client> {
        let table = self.table.load();
        let mut clients: Vec<(&str, Client)> = Vec::new();
        for (_, _, node) in &table.ranges {
            if !clients.iter().any(|(name, _)| *name == &*node.name) {
                clients.push((&node.name, node.pool.next().clone()));
            }
        }
        clients.into_iter().map(|(_, client)| client).collect()
    }

    /// A call was redirected (`MOVED`, `ASK`) or refused while the cluster changes: re-read the
    /// topology now.
    pub(super) fn refresh_soon(&self) {
        self.refresh_now.notify_one();
    }

    /// Applies `timeout` to every node pool, now and later.
    pub(super) fn set_command_timeout(&self, timeout: Duration) {
        self.command_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
        for (_, _, node) in &self.table.load().ranges {
            set_timeout(&node.pool, timeout);
        }
    }

    /// Replaces the table with `owners` (slot ranges and their primaries), keeping the pools of
    /// primaries that stay, making pools for new ones and closing those of primaries that left.
    fn install(&self, owners: Vec<(u16, u16, Server)>) {
        let old = self.table.load_full();
        let mut ranges: Vec<(u16, u16, Arc<Node>)> = Vec::with_capacity(owners.len());
        for (start, end, server) in owners {
            let name = format!("{}:{}", server.host, server.port);
            let node = match ranges
                .iter()
                .map(|(_, _, node)| node)
                .find(|node| *node.name == *name)
                .or_else(|| old.node_named(&name))
            {
                Some(node) => Arc::clone(node),
                None => match self.node_pool(server) {
                    Some(pool) => Arc::new(Node {
                        name: Arc::from(name),
                        pool,
                    }),
                    None => continue,
                },
            };
            ranges.push((start, end, node));
        }
        ranges.sort_by_key(|(start, _, _)| *start);
        let unchanged = ranges.len() == old.ranges.len()
            && ranges
                .iter()
                .zip(&old.ranges)
                .all(|(a, b)| a.0 == b.0 && a.1 == b.1 && Arc::ptr_eq(&a.2, &b.2));
        if unchanged {
            return;
        }
        let names: Vec<&str> = ranges.iter().map(|(_, _, node)| &*node.name).collect();
        tracing::info!(primaries = ?names, "Redis Cluster topology: slot owners changed");
        let left: Vec<Pool> = old
            .ranges
            .iter()
            .filter(|(_, _, node)| !ranges.iter().any(|(_, _, kept)| Arc::ptr_eq(kept, node)))
            .map(|(_, _, node)| node.pool.clone())
            .collect();
        self.table.store(Arc::new(Table { ranges }));
        for pool in left {
            // Calls still in flight on it finish or time out on their own.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), pool.quit()).await;
            });
        }
    }

    /// A plain pool to one primary, configured as the cluster client is (credentials, TLS,
    /// timeouts, reconnection), connecting in the background.
    fn node_pool(&self, server: Server) -> Option<Pool> {
        let template = self.cluster.next();
        let mut config = template.client_config();
        config.server = ServerConfig::Centralized { server };
        let mut builder = Builder::from_config(config);
        builder.set_connection_config(template.connection_config().clone());
        let mut performance = template.perf_config();
        performance.default_command_timeout =
            Duration::from_millis(self.command_timeout_ms.load(Ordering::Relaxed));
        builder.set_performance_config(performance);
        if let Some(policy) = template.client_reconnect_policy() {
            builder.set_policy(policy);
        }
        let pool = match builder.build_pool(self.cluster.size()) {
            Ok(pool) => pool,
            Err(err) => {
                tracing::warn!(error = %err, "cannot build a pool for a Redis Cluster primary");
                return None;
            }
        };
        let connecting = pool.clone();
        tokio::spawn(async move {
            if let Err(err) = connecting.init().await {
                tracing::debug!(error = %err, "a Redis Cluster primary's pool did not connect yet");
            }
        });
        Some(pool)
    }

    /// `CLUSTER SLOTS` from the first primary (or the cluster client) that answers in time.
    async fn read_topology(&self) -> Option<Vec<(u16, u16, Server)>> {
        let options = Options {
            timeout: Some(ASK_TIMEOUT),
            fail_fast: true,
            ..Options::default()
        };
        let table = self.table.load_full();
        let mut asked: Vec<(Client, String)> = Vec::new();
        for (_, _, node) in &table.ranges {
            if !asked.iter().any(|(_, name)| *name == *node.name) {
                let host = node.name.rsplit_once(':').map_or("", |(host, _)| host);
                asked.push((node.pool.next().clone(), host.to_owned()));
            }
        }
        asked.push((self.cluster.next().clone(), String::new()));
        for (client, host) in asked {
            let reply = client.with_options(&options).cluster_slots::<Value>().await;
            if let Ok(reply) = reply
                && let Some(owners) = parse_cluster_slots(&reply, &host)
                && !owners.is_empty()
            {
                return Some(owners);
            }
        }
        None
    }
}

impl Drop for ClusterNodes {
    fn drop(&mut self) {
        let pools: Vec<Pool> = self
            .table
            .load()
            .ranges
            .iter()
            .map(|(_, _, node)| node.pool.clone())
            .collect();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for pool in pools {
                    let _ = tokio::time::timeout(Duration::from_secs(1), pool.quit()).await;
                }
            });
        }
    }
}

fn set_timeout(pool: &Pool, timeout: Duration) {
    let mut performance = pool.perf_config();
    performance.default_command_timeout = timeout;
    pool.update_perf_config(performance);
}

/// Re-reads the topology every [`REFRESH_EVERY`], or sooner when asked; ends with the nodes.
async fn keep_current(nodes: Weak<ClusterNodes>, refresh_now: Arc<Notify>) {
    loop {
        {
            let Some(nodes) = nodes.upgrade() else {
                return;
            };
            if let Some(owners) = nodes.read_topology().await {
                nodes.install(owners);
            }
        }
        // Not holding the nodes while waiting, so dropping the counter ends this task.
        tokio::select! {
            () = refresh_now.notified() => {}
            () = tokio::time::sleep(REFRESH_EVERY) => {}
        }
    }
}

/// The primaries of a `CLUSTER SLOTS` reply: `[start, end, [host, port, id, …], replicas…]`
/// per range. An empty host is the host of the node asked (`asked_host`).
fn parse_cluster_slots(reply: &Value, asked_host: &str) -> Option<Vec<(u16, u16, Server)>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut owners = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let start = u16::try_from(fields.first()?.as_i64()?).ok()?;
        let end = u16::try_from(fields.get(1)?.as_i64()?).ok()?;
        let Value::Array(primary) = fields.get(2)? else {
            return None;
        };
        let host = primary.first()?.as_string()?;
        let port = u16::try_from(primary.get(1)?.as_i64()?).ok()?;
        let host = if host.is_empty() || host == "?" {
            asked_host.to_owned()
        } else {
            host
        };
        if host.is_empty() {
            return None;
        }
        owners.push((start, end, Server::new(host, port)));
    }
    Some(owners)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::String(text.into())
    }

    #[test]
    fn cluster_slots_replies_name_each_ranges_primary() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Integer(0),
                Value::Integer(5460),
                Value::Array(vec![bulk("127.0.0.1"), Value::Integer(7000), bulk("id-a")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Integer(7003), bulk("id-d")]),
            ]),
            Value::Array(vec![
                Value::Integer(5461),
                Value::Integer(16383),
                Value::Array(vec![bulk(""), Value::Integer(7001), bulk("id-b")]),
            ]),
        ]);
        let owners = parse_cluster_slots(&reply, "10.0.0.9").expect("a valid reply");
        let named: Vec<(u16, u16, String)> = owners
            .into_iter()
            .map(|(start, end, server)| (start, end, format!("{}:{}", server.host, server.port)))
            .collect();
        assert_eq!(
            named,
            [
                (0, 5460, "127.0.0.1:7000".to_owned()),
                (5461, 16383, "10.0.0.9:7001".to_owned())
            ]
        );
    }

    #[test]
    fn anything_else_is_no_topology() {
        assert!(parse_cluster_slots(&bulk("ERR"), "h").is_none());
        let short = Value::Array(vec![Value::Array(vec![Value::Integer(0)])]);
        assert!(parse_cluster_slots(&short, "h").is_none());
    }
}
