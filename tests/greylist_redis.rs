//! Redis shared by two store instances (as two mxguard instances share it): a triplet
//! greylisted through A passes through B after the delay, a rate limit of N is enforced
//! across both, and a Redis outage applies the fail mode, then recovers by itself.
//!
//! Starts a real `redis-server` on a free port. Without one the tests are skipped
//! locally and FAIL under `CI=true`.

mod support;

use std::time::{Duration, Instant};

use support::redis::RedisServer;

use mxguard::checks::{Check, FailMode, Pending, RateLimitCheck, resolve};
use mxguard::envelope::Stage;
use mxguard::store::redis::RedisStore;
use mxguard::store::{
    AllowTarget, FakeClock, GreyOutcome, GreyParams, RateOutcome, RateParams, Store,
};
use mxguard::telemetry::Metrics;

fn grey() -> GreyParams {
    GreyParams {
        delay: 300_000_000,
        retry_window: 2 * 86_400_000_000,
        expire: 35 * 86_400_000_000,
        auto_allow_after: 0,
    }
}

#[tokio::test]
async fn two_instances_share_greylist_and_rates() {
    let Some(redis) = RedisServer::start_on(None) else {
        return;
    };
    let clock = FakeClock::new();
    let a = RedisStore::connect(&redis.url(), clock.clone()).unwrap();
    let b = RedisStore::connect(&redis.url(), clock.clone()).unwrap();
    let t = "192.0.2.0/24|alice@example.com|bob@example.org";
    let net = "192.0.2.0/24";
    assert_eq!(
        a.greylist(t, net, &grey()).await.unwrap(),
        GreyOutcome::New {
            retry_in: 300_000_000
        }
    );
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        b.greylist(t, net, &grey()).await.unwrap(),
        GreyOutcome::TooEarly {
            retry_in: 240_000_000
        }
    );
    clock.advance(Duration::from_secs(240));
    assert_eq!(
        b.greylist(t, net, &grey()).await.unwrap(),
        GreyOutcome::Passed
    );
    assert_eq!(
        a.greylist(t, net, &grey()).await.unwrap(),
        GreyOutcome::Known
    );

    // A rate of 5 per minute (burst 5) across both instances: the 6th is refused,
    // whichever instance gets it.
    let p = RateParams::new(5, Duration::from_secs(60), 5);
    for i in 0..5 {
        let s: &dyn Store = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            s.rate("rule|client_net=192.0.2.0/24", &p, 1).await.unwrap(),
            RateOutcome::Allowed,
            "message {i}"
        );
    }
    for s in [&a as &dyn Store, &b] {
        let RateOutcome::Limited { retry_in } =
            s.rate("rule|client_net=192.0.2.0/24", &p, 1).await.unwrap()
        else {
            panic!("6th message must be limited");
        };
        assert_eq!(retry_in, 12_000_000);
    }
    clock.advance(Duration::from_secs(12));
    assert_eq!(
        b.rate("rule|client_net=192.0.2.0/24", &p, 1).await.unwrap(),
        RateOutcome::Allowed
    );

    // Every key has a TTL.
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&k)
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(ttl > 0, "{k} has no TTL");
    }

    // Admin operations through the other instance.
    a.allow(
        &AllowTarget::Network("203.0.113.0/24".into()),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let p_aa = GreyParams {
        auto_allow_after: 3,
        ..grey()
    };
    assert_eq!(
        b.greylist("203.0.113.0/24|x@y|z@w", "203.0.113.0/24", &p_aa)
            .await
            .unwrap(),
        GreyOutcome::AutoAllowed
    );
    assert_eq!(b.list().await.unwrap().len(), 2);
    assert_eq!(a.purge("").await.unwrap(), 2);
}

#[tokio::test]
async fn redis_outage_applies_fail_mode_then_recovers() {
    let Some(mut redis) = RedisServer::start_on(None) else {
        return;
    };
    let port = redis.port;
    let clock = FakeClock::new();
    let store = RedisStore::connect(&redis.url(), clock.clone()).unwrap();
    let metrics = Metrics::standalone();
    let check = |fail| Pending {
        check: Check::RateLimit(RateLimitCheck {
            key: "r|client_ip=192.0.2.1".into(),
            params: RateParams::new(1, Duration::from_secs(60), 1),
            cost: 1,
            count: mxguard::store::RateCount::Messages,
        }),
        fail,
        rule: "r".into(),
    };
    assert_eq!(
        resolve(&store, &metrics, Stage::Mail, &check(FailMode::Open)).await,
        None
    );
    let limited = resolve(&store, &metrics, Stage::Mail, &check(FailMode::Open))
        .await
        .expect("second message is over the limit");
    assert_eq!(limited.code, 451);
    assert!(
        limited
            .to_string()
            .starts_with("451 4.7.0 Rate limit exceeded, please try again in 60 seconds"),
        "{limited}"
    );

    redis.kill();
    // Open: passes; tempfail: 451 4.3.0. Both counted as store errors.
    assert_eq!(
        resolve(&store, &metrics, Stage::Mail, &check(FailMode::Open)).await,
        None
    );
    let r = resolve(&store, &metrics, Stage::Mail, &check(FailMode::Tempfail))
        .await
        .expect("tempfail mode refuses");
    assert!(r.to_string().starts_with("451 4.3.0 "), "{r}");
    let errors = metrics
        .store
        .store_errors_total
        .with_label_values(&["rate_limit"])
        .get();
    assert_eq!(errors, 2);

    // Redis back on the same port (empty: no persistence): the same store instance
    // reconnects by itself.
    let _redis = RedisServer::start_on(Some(port)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match store
            .rate(
                "probe",
                &RateParams::new(100, Duration::from_secs(1), 100),
                1,
            )
            .await
        {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "no reconnect: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(
        resolve(&store, &metrics, Stage::Mail, &check(FailMode::Tempfail)).await,
        None
    );
}
