//! Greylist + rate-limit decisions per second for the file store and Redis (and the
//! memory store for reference): each decision is one greylist call on a known triplet
//! and one rate-limit call, as a message to one recipient costs. Median of 5 runs.
//!
//! `cargo bench --bench store_decisions` (Redis part needs /usr/bin/redis-server).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mxguard::store::{GreyParams, RateParams, Store, SystemClock};

const N: usize = 5_000;
const RUNS: usize = 5;
const CONCURRENCY: usize = 32;

async fn run(store: Arc<dyn Store>) -> f64 {
    let g = GreyParams {
        delay: 0,
        retry_window: 86_400_000_000,
        expire: 86_400_000_000,
        auto_allow_after: 0,
    };
    let r = RateParams::new(1_000_000, Duration::from_secs(1), 1_000_000);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..N / CONCURRENCY {
                let t = format!("192.0.2.0/24|s{w}@example.com|r{}@example.org", i % 100);
                store.greylist(&t, "192.0.2.0/24", &g).await.unwrap();
                store
                    .rate(&format!("bench|client_net=10.{w}.0.0/24"), &r, 1)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (N / CONCURRENCY * CONCURRENCY) as f64 / start.elapsed().as_secs_f64()
}

async fn median(name: &str, store: Arc<dyn Store>) {
    run(store.clone()).await; // warm-up: triplets become known
    let mut v = Vec::new();
    for _ in 0..RUNS {
        v.push(run(store.clone()).await);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{name:<8} {:>10.0} decisions/s (greylist + rate limit; median of {RUNS}, {CONCURRENCY} concurrent)",
        v[RUNS / 2]
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let clock: Arc<dyn mxguard::store::Clock> = Arc::new(SystemClock);
        median(
            "memory",
            Arc::new(mxguard::store::memory::MemoryStore::new(clock.clone())),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        median(
            "file",
            Arc::new(
                mxguard::store::file::FileStore::open(&dir.path().join("b.redb"), clock.clone())
                    .unwrap(),
            ),
        )
        .await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let Ok(mut child) = Command::new("/usr/bin/redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
        else {
            println!("redis    skipped (no /usr/bin/redis-server)");
            return;
        };
        let url = format!("redis://127.0.0.1:{port}/0");
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        median(
            "redis",
            Arc::new(mxguard::store::redis::RedisStore::connect(&url, clock).unwrap()),
        )
        .await;
        let _ = child.kill();
        let _ = child.wait();
    });
}
