//! The greylist life cycle and GCRA through the `Store` trait, for the memory and file
//! stores, on a fake clock (no sleeps); the file store's state survives reopening.

use std::sync::Arc;
use std::time::Duration;

use mxguard::store::file::FileStore;
use mxguard::store::memory::MemoryStore;
use mxguard::store::{
    AllowTarget, FakeClock, GreyEntry, GreyOutcome, GreyParams, RateOutcome, RateParams, Store,
};

const MIN: Duration = Duration::from_secs(60);
const TRIPLET: &str = "192.0.2.0/24|alice@example.com|bob@example.org";
const NET: &str = "192.0.2.0/24";

fn params(auto_allow_after: u32) -> GreyParams {
    GreyParams {
        delay: 5 * 60_000_000,
        retry_window: 2 * 24 * 3600 * 1_000_000,
        expire: 35 * 24 * 3600 * 1_000_000,
        auto_allow_after,
    }
}

async fn life_cycle(store: &dyn Store, clock: &FakeClock) {
    let p = params(2);
    assert_eq!(
        store.greylist(TRIPLET, NET, &p).await.unwrap(),
        GreyOutcome::New {
            retry_in: 300_000_000
        }
    );
    clock.advance(MIN);
    assert_eq!(
        store.greylist(TRIPLET, NET, &p).await.unwrap(),
        GreyOutcome::TooEarly {
            retry_in: 240_000_000
        }
    );
    clock.advance(4 * MIN);
    assert_eq!(
        store.greylist(TRIPLET, NET, &p).await.unwrap(),
        GreyOutcome::Passed
    );
    assert_eq!(
        store.greylist(TRIPLET, NET, &p).await.unwrap(),
        GreyOutcome::Known
    );
    // A second triplet from the same network passes: two passes auto-allow the network.
    let other = "192.0.2.0/24|carol@example.com|bob@example.org";
    assert!(matches!(
        store.greylist(other, NET, &p).await.unwrap(),
        GreyOutcome::New { .. }
    ));
    clock.advance(5 * MIN);
    assert_eq!(
        store.greylist(other, NET, &p).await.unwrap(),
        GreyOutcome::Passed
    );
    let third = "192.0.2.0/24|dave@example.com|bob@example.org";
    assert_eq!(
        store.greylist(third, NET, &p).await.unwrap(),
        GreyOutcome::AutoAllowed
    );
    // Another network is still greylisted.
    assert!(matches!(
        store
            .greylist("198.51.100.0/24|x@y|bob@example.org", "198.51.100.0/24", &p)
            .await
            .unwrap(),
        GreyOutcome::New { .. }
    ));
    // After `expire` without traffic everything is forgotten, and swept.
    clock.advance(36 * 24 * 60 * MIN);
    assert!(store.sweep().await.unwrap() >= 3);
    assert!(store.list().await.unwrap().is_empty());
    assert!(matches!(
        store.greylist(TRIPLET, NET, &p).await.unwrap(),
        GreyOutcome::New { .. }
    ));
}

async fn gcra(store: &dyn Store, clock: &FakeClock) {
    // 3 per second, burst 3.
    let p = RateParams::new(3, Duration::from_secs(1), 3);
    for _ in 0..3 {
        assert_eq!(store.rate("k", &p, 1).await.unwrap(), RateOutcome::Allowed);
    }
    let RateOutcome::Limited { retry_in } = store.rate("k", &p, 1).await.unwrap() else {
        panic!("4th must be limited");
    };
    assert!((333_000..=333_334).contains(&retry_in), "{retry_in}");
    // Another key is unaffected.
    assert_eq!(
        store.rate("other", &p, 1).await.unwrap(),
        RateOutcome::Allowed
    );
    clock.advance(Duration::from_micros(retry_in));
    assert_eq!(store.rate("k", &p, 1).await.unwrap(), RateOutcome::Allowed);
    assert!(matches!(
        store.rate("k", &p, 1).await.unwrap(),
        RateOutcome::Limited { .. }
    ));
    // Idle keys are swept.
    clock.advance(Duration::from_secs(10));
    assert!(store.sweep().await.unwrap() >= 1);
    // A cost above the burst is charged the burst: it passes on a full bucket.
    assert_eq!(store.rate("k", &p, 50).await.unwrap(), RateOutcome::Allowed);
}

async fn admin(store: &dyn Store) {
    let p = params(5);
    store
        .allow(&AllowTarget::Network("203.0.113.0/24".into()), 10 * MIN)
        .await
        .unwrap();
    assert_eq!(
        store
            .greylist("203.0.113.0/24|a@b|c@d", "203.0.113.0/24", &p)
            .await
            .unwrap(),
        GreyOutcome::AutoAllowed
    );
    store
        .allow(
            &AllowTarget::Triplet("10.0.0.0/24|a@b|c@d".into()),
            10 * MIN,
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .greylist("10.0.0.0/24|a@b|c@d", "10.0.0.0/24", &p)
            .await
            .unwrap(),
        GreyOutcome::Known
    );
    let list = store.list().await.unwrap();
    assert!(
        list.iter()
            .any(|e| matches!(e, GreyEntry::Network { net, .. } if net == "203.0.113.0/24"))
    );
    assert_eq!(store.purge("203.0.113.").await.unwrap(), 1);
    // The triplet allowed above and the one life_cycle left pending.
    assert_eq!(store.purge("").await.unwrap(), 2);
    assert!(store.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn memory_store() {
    let clock = FakeClock::new();
    let store = MemoryStore::new(clock.clone());
    life_cycle(&store, &clock).await;
    gcra(&store, &clock).await;
    admin(&store).await;
}

#[tokio::test]
async fn file_store() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new();
    let store = FileStore::open(&dir.path().join("s.redb"), clock.clone()).unwrap();
    life_cycle(&store, &clock).await;
    gcra(&store, &clock).await;
    admin(&store).await;
}

#[tokio::test]
async fn file_store_pass_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/mxguard.redb");
    let clock = FakeClock::new();
    let p = params(1);
    {
        let store: Arc<dyn Store> = Arc::new(FileStore::open(&path, clock.clone()).unwrap());
        assert!(matches!(
            store.greylist(TRIPLET, NET, &p).await.unwrap(),
            GreyOutcome::New { .. }
        ));
        clock.advance(6 * MIN);
        assert_eq!(
            store.greylist(TRIPLET, NET, &p).await.unwrap(),
            GreyOutcome::Passed
        );
    }
    let store = FileStore::open(&path, clock.clone()).unwrap();
    // The triplet is known, and its network (1 pass) is auto-allowed.
    assert_eq!(
        store
            .greylist("192.0.2.0/24|new@example.com|x@example.org", NET, &p)
            .await
            .unwrap(),
        GreyOutcome::AutoAllowed
    );
    let p = params(0);
    assert_eq!(
        store.greylist(TRIPLET, NET, &p).await.unwrap(),
        GreyOutcome::Known
    );
}
