//! Redis for more than one machine, against real `redis-server`s on loopback:
//!
//! - a Redis Cluster (3 masters, a replica each) and a Sentinel deployment (a master, a
//!   replica, three sentinels) shared by two mxguard processes: greylisting and rate
//!   limits are shared; a master is killed by its PID; during the failover window every
//!   call follows its rule's `fail:` mode (and is counted and logged); afterwards both
//!   instances decide correctly again, with the state written before the failover;
//! - the store itself (fake clock): a cluster keeps each greylist script in one slot and
//!   `list`/`allow`/`purge` span every shard; a store created before its cluster exists
//!   starts working when the cluster does; a graceful `SENTINEL FAILOVER` (the master is
//!   demoted, not killed) is followed, with a hung sentinel at the head of the list.
//!
//! Without redis-server/redis-cli (or curl) the tests are skipped locally and FAIL under
//! `CI=true`. Every wait polls the servers' state; none sleeps for synchronisation.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::client::{RawClient, Reply};
use support::fake_upstream::{FakeUpstream, Script};
use support::mxguard::{MxGuard, MxOpts};
use support::redis::{RedisCluster, RedisSentinels, cluster_url};
use support::{free_port, wait_for};

use mxguard::store::{
    AllowTarget, Clock, FakeClock, GreyEntry, GreyOutcome, GreyParams, RateOutcome, RateParams,
    Store, StoreConfig,
};

/// Greylisting for everyone, failing open (the recommended mode); a rate limit (rule
/// `RATE_RULE`) of three MAILs for 127.0.0.3, failing with a tempfail.
const RULES: &str = r#"
rules:
  - name: RATE_RULE
    stage: mail
    if: { client_ip: { in: [127.0.0.3] } }
    then: { rate_limit: { key: [client_ip], rate: 3/1h, burst: 3, fail: tempfail } }
  - name: greylist-all
    stage: rcpt
    then: { greylist: { delay: 1s, retry_window: 1h, expire: 1d, auto_allow_after: 10, fail: open } }
"#;

/// Two SMTP sessions during the failover window, each with one store call under the
/// 1 s deadline: they must not hang.
const WINDOW_SESSIONS_MAX: Duration = Duration::from_secs(4);

/// How long a failover may take once the master is gone (down-after plus election).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

struct Instance {
    mx: MxGuard,
    metrics: String,
}

/// The rate limit's rule name where it does not matter.
const RATE_RULE: &str = "per-client-messages";

fn start(up: &FakeUpstream, store: &str, rate_rule: &str) -> Instance {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut opts = MxOpts::new(up.addr);
    opts.rules = vec![(
        "10-rules.yaml".into(),
        RULES.replace("RATE_RULE", rate_rule),
    )];
    opts.args = vec![
        "--store".into(),
        store.into(),
        "--metrics".into(),
        metrics.clone(),
    ];
    let mx = MxGuard::start(opts);
    wait_for(Duration::from_secs(10), "the metrics endpoint", || {
        try_metrics(&metrics)
    });
    Instance { mx, metrics }
}

fn try_metrics(addr: &str) -> Option<String> {
    support::try_metrics(addr)
}

impl Instance {
    /// `mxguard_store_errors_total{op}`.
    fn store_errors(&self, op: &str) -> f64 {
        let text = try_metrics(&self.metrics).expect("metrics");
        let series = format!("mxguard_store_errors_total{{op=\"{op}\"}}");
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn all_store_errors(&self) -> f64 {
        self.store_errors("greylist") + self.store_errors("rate_limit")
    }

    /// MAIL + RCPT in a fresh session from `source`; the RCPT reply, or MAIL's if refused.
    fn rcpt_from(&self, source: &str, from: &str, to: &str) -> Reply {
        let mut c = RawClient::connect_from(self.mx.addr, Some(source)).expect("connect");
        assert_eq!(c.reply().code, 220);
        c.ehlo("client.example");
        let m = c.cmd(&format!("MAIL FROM:<{from}>"));
        if m.code != 250 {
            return m;
        }
        let r = c.cmd(&format!("RCPT TO:<{to}>"));
        c.cmd("QUIT");
        r
    }

    fn rcpt(&self, from: &str, to: &str) -> Reply {
        self.rcpt_from("127.0.0.2", from, to)
    }

    /// A MAIL from the rate-limited client.
    fn limited_mail(&self) -> Reply {
        self.rcpt_from("127.0.0.3", "r@example.org", "s@example.net")
    }

    /// Retries a greylisted triplet until it passes (each try a real SMTP session).
    fn retry_until_accepted(&self, from: &str, to: &str) {
        wait_for(
            Duration::from_secs(10),
            "the greylisted retry to pass",
            || {
                let r = self.rcpt(from, to);
                assert!(r.code == 250 || r.is("451 4.7.1"), "{r}");
                (r.code == 250).then_some(())
            },
        );
    }

    /// Polls until the store decides again: a new triplet is greylisted (a store error
    /// would let it through, `fail: open`).
    fn wait_store_back(&self, what: &str) {
        let mut n = 0;
        wait_for(
            FAILOVER_TIMEOUT,
            &format!("{what} to use the store again"),
            || {
                n += 1;
                self.rcpt(&format!("probe{n}@example.org"), "p@example.net")
                    .is("451 4.7.1")
                    .then_some(())
            },
        );
    }
}

/// Before the failover: a triplet greylisted through A passes through B; the rate
/// budget of three MAILs is spent across both.
fn share_state(a: &Instance, b: &Instance) {
    assert!(a.rcpt("x@example.org", "y@example.net").is("451 4.7.1"));
    b.retry_until_accepted("x@example.org", "y@example.net");
    assert_eq!(a.rcpt("x@example.org", "y@example.net").code, 250);
    for mx in [a, b, a] {
        let r = mx.limited_mail();
        assert!(
            r.is("451 4.7.1"),
            "MAIL within the budget, RCPT greylisted: {r}"
        );
    }
    let refused = b.limited_mail();
    assert!(
        refused.is("451 4.7.0"),
        "the fourth MAIL must hit the shared limit: {refused}"
    );
    assert!(a.limited_mail().is("451 4.7.0"));
    assert_eq!(a.all_store_errors() + b.all_store_errors(), 0.0);
}

/// After the failover: what was written before it is there (the passed triplet, the
/// spent budget), and new state is shared again. No store error on the way, so these
/// are real decisions, not `fail:` modes.
fn state_survived(a: &Instance, b: &Instance) {
    let errors = (a.all_store_errors(), b.all_store_errors());
    for mx in [a, b] {
        let r = mx.rcpt("x@example.org", "y@example.net");
        assert_eq!(r.code, 250, "the passed triplet was lost: {r}");
        let r = mx.limited_mail();
        assert!(r.is("451 4.7.0"), "the spent budget was lost: {r}");
    }
    assert!(b.rcpt("after@example.org", "y@example.net").is("451 4.7.1"));
    a.retry_until_accepted("after@example.org", "y@example.net");
    assert_eq!(
        (a.all_store_errors(), b.all_store_errors()),
        errors,
        "store errors after the failover"
    );
}

/// `mxguard greylist --store URL list` (offline, as an admin runs it) shows the triplet
/// that passed before the failover.
fn admin_lists_the_passed_triplet(store_url: &str) {
    let out = Command::new(support::mxguard::BIN)
        .args(["greylist", "--store", store_url, "list"])
        .output()
        .expect("run mxguard greylist");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines()
            .any(|l| l.contains("|x@example.org|y@example.net") && l.contains("passed")),
        "{text}"
    );
}

/// During the window, what the clients saw: greylisting failed open (a new triplet
/// passes), the rate limit (when its key is on the failed master) tempfailed; both
/// counted and logged.
fn assert_window_replies(a: &Instance, b: &Instance, during: &Reply, limited: &Reply) {
    assert_eq!(
        during.code, 250,
        "greylisting fails open during the failover window: {during}"
    );
    assert!(
        limited.is("451 4.3.0"),
        "the rate limit fails with a tempfail during the window: {limited}"
    );
    assert!(a.store_errors("greylist") >= 1.0);
    assert!(b.store_errors("rate_limit") >= 1.0);
    for mx in [a, b] {
        let log = mx.mx.wait_log("state store failed", Duration::from_secs(5));
        assert!(
            log.lines()
                .any(|l| l.contains("state store failed") && l.contains("WARN")),
            "{log}"
        );
    }
}

#[test]
fn sentinel_two_instances_share_state_through_a_master_failover() {
    let Some(mut rs) = RedisSentinels::start() else {
        return;
    };
    if !support::require(&["curl"], false) {
        return;
    }
    let t0 = Instant::now();
    let up = FakeUpstream::start(Script::default());
    let a = start(&up, &rs.store_url(), RATE_RULE);
    let b = start(&up, &rs.store_url(), RATE_RULE);
    share_state(&a, &b);

    // Everything written has reached the replica; then the master dies.
    wait_for(Duration::from_secs(10), "the replica to catch up", || {
        rs.master.replicas_caught_up(1).then_some(())
    });
    let old = rs.master.port;
    rs.master.kill();
    let window = Instant::now();
    let during = a.rcpt("window@example.org", "y@example.net");
    let limited = b.limited_mail();
    let took = window.elapsed();
    eprintln!("two sessions in the failover window: {took:?}");
    assert!(
        took < WINDOW_SESSIONS_MAX,
        "{took:?}: the store deadline is 1 s"
    );
    assert_eq!(
        rs.master_port(),
        Some(old),
        "the failover finished before the window could be observed"
    );
    assert_window_replies(&a, &b, &during, &limited);

    rs.wait_master(rs.replica.port, FAILOVER_TIMEOUT);
    let promoted = Instant::now();
    eprintln!("sentinel: kill to promotion {:?}", window.elapsed());
    a.wait_store_back("instance A");
    b.wait_store_back("instance B");
    eprintln!(
        "sentinel: promotion to both deciding {:?}",
        promoted.elapsed()
    );
    assert!(
        a.mx.log().contains("the master moved") || b.mx.log().contains("the master moved"),
        "the new master is logged"
    );
    state_survived(&a, &b);
    admin_lists_the_passed_triplet(&rs.store_url());
    eprintln!("sentinel failover test: {:?}", t0.elapsed());
}

#[test]
fn cluster_two_instances_share_state_through_a_master_failover() {
    let Some(mut cluster) = RedisCluster::start(3, 1) else {
        return;
    };
    if !support::require(&["curl"], false) {
        return;
    }
    let t0 = Instant::now();
    // The greylist records of the test clients' network, and a rate-limit rule whose key
    // lands on another master (the rule name is part of the key): the failover of the
    // greylist's master must not disturb the rate limit's.
    let net = "127.0.0.0/24";
    let slot = cluster.keyslot(&format!("mxg:{{{net}}}:gn"));
    let victim = cluster.owner_of(slot, None).expect("an owner");
    let rate_key = |rule: &str| format!("mxg:rl:{rule}|client_ip=127.0.0.3");
    let rate_rule = (0..)
        .map(|i| format!("{RATE_RULE}-{i}"))
        .find(|r| cluster.owner_of(cluster.keyslot(&rate_key(r)), None) != Some(victim))
        .unwrap();
    let up = FakeUpstream::start(Script::default());
    let a = start(&up, &cluster.store_url(), &rate_rule);
    let b = start(&up, &cluster.store_url(), &rate_rule);
    share_state(&a, &b);

    // The greylist keys of the network share one slot (the script ran: no CROSSSLOT).
    let grey_keys = cluster.keys(&format!("mxg:{{{net}}}:*"));
    assert!(
        grey_keys.contains(&format!("mxg:{{{net}}}:gn")),
        "no network record: {grey_keys:?}"
    );
    for k in &grey_keys {
        assert_eq!(cluster.keyslot(k), slot, "{k}");
    }
    assert_eq!(cluster.keys("mxg:rl:*"), [rate_key(&rate_rule)]);

    // Kill the master of the greylist slot (its writes have reached its replica).
    cluster.wait_replicated(victim, 1);
    cluster.kill(victim);
    let window = Instant::now();
    let during = a.rcpt("window@example.org", "y@example.net");
    let limited = b.limited_mail();
    let took = window.elapsed();
    eprintln!("two sessions in the failover window: {took:?}");
    assert!(
        took < WINDOW_SESSIONS_MAX,
        "{took:?}: the store deadline is 1 s"
    );
    assert!(
        cluster.still_owned_by(slot, victim),
        "the failover finished before the window could be observed"
    );
    assert_eq!(
        during.code, 250,
        "greylisting fails open during the failover window: {during}"
    );
    assert!(
        limited.is("451 4.7.0"),
        "the rate limit's shard is up: it decides: {limited}"
    );
    assert!(a.store_errors("greylist") >= 1.0);
    assert_eq!(b.store_errors("rate_limit"), 0.0);
    a.mx.wait_log("state store failed", Duration::from_secs(5));

    let owner = cluster.wait_failover(slot, victim, FAILOVER_TIMEOUT);
    assert_ne!(owner, victim);
    let promoted = Instant::now();
    eprintln!("cluster: kill to promotion {:?}", window.elapsed());
    a.wait_store_back("instance A");
    b.wait_store_back("instance B");
    eprintln!(
        "cluster: promotion to both deciding {:?}",
        promoted.elapsed()
    );
    state_survived(&a, &b);
    admin_lists_the_passed_triplet(&cluster.store_url());
    eprintln!("cluster failover test: {:?}", t0.elapsed());
}

fn grey(auto_allow_after: u32) -> GreyParams {
    GreyParams {
        delay: 300_000_000,
        retry_window: 2 * 86_400_000_000,
        expire: 35 * 86_400_000_000,
        auto_allow_after,
    }
}

async fn open(url: &str, clock: Arc<FakeClock>) -> Arc<dyn Store> {
    let clock: Arc<dyn Clock> = clock;
    url.parse::<StoreConfig>()
        .unwrap()
        .open(Path::new("/nonexistent"), clock)
        .await
        .unwrap()
}

/// Polls `store` (a greylist call) until it answers; returns that answer.
async fn first_answer(store: &dyn Store, t: &str, net: &str, p: &GreyParams) -> GreyOutcome {
    let deadline = Instant::now() + FAILOVER_TIMEOUT;
    loop {
        match store.greylist(t, net, p).await {
            Ok(o) => return o,
            Err(e) => {
                assert!(Instant::now() < deadline, "the store never came back: {e}");
                // polling interval while the store is unreachable (not a synchronisation sleep)
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_store_keeps_scripts_in_one_slot_and_admin_spans_shards() {
    if !support::require(support::redis::HA_TOOLS, false) {
        return;
    }
    // The store exists before the cluster does (mxguard starts while Redis is down).
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let clock = FakeClock::new();
    let a = open(&cluster_url(&ports), clock.clone()).await;
    let t0 = Instant::now();
    let early = a.greylist("n|s|r", "192.0.2.0/24", &grey(0)).await;
    assert!(early.is_err(), "{early:?}");
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    let cluster = tokio::task::spawn_blocking(move || RedisCluster::start_on(&ports, 0))
        .await
        .unwrap()
        .expect("cluster");
    let b = open(&cluster.store_url(), clock.clone()).await;

    // The life cycle across two stores, with auto-allow (the script's second key).
    let net = "192.0.2.0/24";
    let t = "192.0.2.0/24|alice@example.com|bob@example.org";
    assert_eq!(
        first_answer(&*a, t, net, &grey(1)).await,
        GreyOutcome::New {
            retry_in: 300_000_000
        }
    );
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        b.greylist(t, net, &grey(1)).await.unwrap(),
        GreyOutcome::TooEarly {
            retry_in: 240_000_000
        }
    );
    clock.advance(Duration::from_secs(240));
    assert_eq!(
        b.greylist(t, net, &grey(1)).await.unwrap(),
        GreyOutcome::Passed
    );
    assert_eq!(
        a.greylist(
            "192.0.2.0/24|other@example.com|bob@example.org",
            net,
            &grey(1)
        )
        .await
        .unwrap(),
        GreyOutcome::AutoAllowed
    );
    let tagged = cluster.keys("mxg:{192.0.2.0/24}:*");
    assert_eq!(tagged.len(), 2, "{tagged:?}");
    assert_eq!(cluster.keyslot(&tagged[0]), cluster.keyslot(&tagged[1]));

    // Many networks: their keys spread over the shards; list, allow and purge see all.
    for i in 0..30 {
        let net = format!("198.51.{i}.0/24");
        let t = format!("{net}|s{i}@example.com|r@example.org");
        assert!(matches!(
            a.greylist(&t, &net, &grey(0)).await.unwrap(),
            GreyOutcome::New { .. }
        ));
    }
    let shards_used = cluster
        .masters()
        .iter()
        .filter(|&&m| {
            !cluster.nodes[m]
                .query::<Vec<String>>("KEYS", &["mxg:{198.51.*"])
                .unwrap_or_default()
                .is_empty()
        })
        .count();
    assert_eq!(shards_used, 3, "30 networks should reach every shard");
    let list = b.list().await.unwrap();
    let pending = list
        .iter()
        .filter(|e| matches!(e, GreyEntry::Triplet { record, .. } if !record.passed))
        .count();
    assert_eq!((list.len(), pending), (32, 30), "{list:?}");
    b.allow(
        &AllowTarget::Triplet("198.51.7.0/24|s7@example.com|r@example.org".into()),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(
        a.greylist(
            "198.51.7.0/24|s7@example.com|r@example.org",
            "198.51.7.0/24",
            &grey(0)
        )
        .await
        .unwrap(),
        GreyOutcome::Known
    );
    // A triplet not seen yet: allowed under the network it starts with.
    a.allow(
        &AllowTarget::Triplet("10.9.9.0/24|new@example.com|r@example.org".into()),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(
        b.greylist(
            "10.9.9.0/24|new@example.com|r@example.org",
            "10.9.9.0/24",
            &grey(0)
        )
        .await
        .unwrap(),
        GreyOutcome::Known
    );
    a.allow(
        &AllowTarget::Network("203.0.113.0/24".into()),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(
        b.greylist("203.0.113.0/24|x@y|z@w", "203.0.113.0/24", &grey(3))
            .await
            .unwrap(),
        GreyOutcome::AutoAllowed
    );
    assert_eq!(
        a.purge("198.51.1").await.unwrap(),
        11,
        "198.51.1.0 and 198.51.10-19"
    );
    assert_eq!(b.purge("").await.unwrap(), 34 - 11);
    assert!(cluster.keys("mxg:{*").is_empty());

    // One rate budget across both stores, whichever shard its key is on.
    let p = RateParams::new(5, Duration::from_secs(60), 5);
    for i in 0..5 {
        let s = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            s.rate("rule|client_net=192.0.2.0/24", &p, 1).await.unwrap(),
            RateOutcome::Allowed
        );
    }
    assert!(matches!(
        a.rate("rule|client_net=192.0.2.0/24", &p, 1).await.unwrap(),
        RateOutcome::Limited { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_store_follows_a_graceful_failover() {
    let Some(rs) = tokio::task::spawn_blocking(RedisSentinels::start)
        .await
        .unwrap()
    else {
        return;
    };
    // The first sentinel listed accepts connections and never answers (a hung host): a
    // lookup that waits for it fails, and the next one asks the next sentinel first.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = rs.store_url().replacen(
        "redis+sentinel://",
        &format!("redis+sentinel://{},", silent.local_addr().unwrap()),
        1,
    );
    let clock = FakeClock::new();
    let store = open(&url, clock.clone()).await;
    let t = "192.0.2.0/24|alice@example.com|bob@example.org";
    let net = "192.0.2.0/24";
    let t0 = Instant::now();
    assert!(matches!(
        first_answer(&*store, t, net, &grey(0)).await,
        GreyOutcome::New { .. }
    ));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let p = RateParams::new(1, Duration::from_secs(3600), 1);
    assert_eq!(store.rate("r", &p, 1).await.unwrap(), RateOutcome::Allowed);
    let rs = tokio::task::spawn_blocking(move || {
        wait_for(Duration::from_secs(10), "the replica to catch up", || {
            rs.master.replicas_caught_up(1).then_some(())
        });
        // The old master is demoted to a replica: it stays up, refuses writes
        // (READONLY) and the sentinels disconnect its clients.
        rs.failover();
        rs.wait_master(rs.replica.port, FAILOVER_TIMEOUT);
        rs
    })
    .await
    .unwrap();
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        first_answer(&*store, t, net, &grey(0)).await,
        GreyOutcome::TooEarly {
            retry_in: 240_000_000
        },
        "the triplet written before the failover"
    );
    assert!(matches!(
        store.rate("r", &p, 1).await.unwrap(),
        RateOutcome::Limited { .. }
    ));
    // The writes went to the new master.
    let on_new: bool = rs
        .replica
        .query("EXISTS", &[&format!("mxg:gt:{t}")])
        .unwrap();
    assert!(on_new);
    assert_eq!(
        rs.replica
            .info("replication")
            .get("role")
            .map(String::as_str),
        Some("master")
    );
}
