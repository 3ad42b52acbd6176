//! The PostgreSQL store against a real server (`scripts/postgres` starts one; `scripts/test`
//! passes its connection string in `FLEETPORT_TEST_POSTGRES`). Each test gets a database of
//! its own. Replicas are several `PgStore`s on one database, as several `fleetport up`
//! processes would be.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetport_store::fence::fenced;
use fleetport_store::pg::{Leadership, PgStore};
use fleetport_store::{Abort, ReadTxnExt, Store, StoreError, WriteTxnExt, read, write};

/// A new database on the test server, or None where no server is configured (a developer's
/// `cargo test`); CI always configures one, and there a missing server fails the test.
fn database() -> Option<String> {
    let Ok(base) = std::env::var("FLEETPORT_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "FLEETPORT_TEST_POSTGRES is not set: run scripts/test, which starts PostgreSQL"
        );
        eprintln!("skipped: no FLEETPORT_TEST_POSTGRES (scripts/postgres starts a server)");
        return None;
    };
    let name = format!(
        "fp_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut admin = postgres::Client::connect(&base, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    Some(format!("{base} dbname={name}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[derive(Debug, PartialEq)]
enum E {
    Taken,
    Store,
}

impl From<StoreError> for E {
    fn from(_: StoreError) -> Self {
        E::Store
    }
}

fn keys(store: &dyn Store, collection: &str, prefix: &str) -> Vec<String> {
    read::<_, StoreError>(store, |t| {
        Ok(t.scan(collection, prefix, None, 100)?
            .into_iter()
            .map(|r| r.key)
            .collect())
    })
    .unwrap()
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "not reached in time: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn writes_commit_scan_in_order_abort_alone_and_survive_a_reopen() {
    let Some(url) = database() else { return };
    let rt = runtime();
    let store = PgStore::open(&url).unwrap();
    rt.block_on(async {
        for k in ["b", "a", "c", "ab", "b\u{e9}"] {
            write::<_, E>(&store, move |t| Ok(t.put_json("c", k, &k)?))
                .await
                .unwrap();
        }
        // A failing job rolls back alone, whatever it wrote.
        let failed: Result<(), E> = write(&store, |t| {
            t.put_json("c", "z", &"z")?;
            Err(Abort::Domain(E::Taken))
        })
        .await;
        assert_eq!(failed, Err(E::Taken));
        // Inside a job, reads see the job's own writes.
        let seen = write::<_, E>(&store, |t| {
            t.put_json("c", "d", &"d")?;
            Ok(t.scan("c", "", Some("b"), 10)?.len())
        })
        .await
        .unwrap();
        assert_eq!(seen, 3, "b\u{e9}, c and d sort after b");
        assert!(
            write::<_, E>(&store, |t| Ok(t.delete("c", "c")?))
                .await
                .unwrap()
        );
    });
    // Reads come from the copy, in the byte order SQLite and the copy use.
    assert_eq!(keys(&store, "c", ""), ["a", "ab", "b", "b\u{e9}", "d"]);
    assert_eq!(keys(&store, "c", "b"), ["b", "b\u{e9}"]);
    assert_eq!(
        read::<_, StoreError>(&store, |t| t.count("c", "a")).unwrap(),
        2
    );
    store.close();
    drop(store);
    let again = PgStore::open(&url).unwrap();
    assert_eq!(keys(&again, "c", ""), ["a", "ab", "b", "b\u{e9}", "d"]);
    assert_eq!(
        read::<_, StoreError>(&again, |t| t.get_json::<String>("c", "ab")).unwrap(),
        Some("ab".to_string())
    );
}

#[test]
fn replicas_see_each_others_writes_and_counters_stay_gap_free_under_concurrent_writers() {
    let Some(url) = database() else { return };
    let rt = runtime();
    let a = Arc::new(PgStore::open(&url).unwrap());
    let b = Arc::new(PgStore::open(&url).unwrap());
    rt.block_on(async {
        write::<_, E>(&*a, |t| Ok(t.put_json("svc", "web", &1)?))
            .await
            .unwrap();
    });
    // Through the notification (or the poll), well within the second the poll allows.
    let started = Instant::now();
    wait_until("b sees a's write", || keys(&*b, "svc", "") == ["web"]);
    assert!(started.elapsed() < Duration::from_secs(3));
    // Read-modify-write from both replicas at once: serialised across them, none lost.
    let n = 100;
    rt.block_on(async {
        let mut jobs = Vec::new();
        for i in 0..n {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            jobs.push(tokio::spawn(async move {
                write::<_, E>(&*store, |t| {
                    let next = t.get_json::<u64>("counter", "revision")?.unwrap_or(0) + 1;
                    t.put_json("counter", "revision", &next)?;
                    t.put_json("counter", &format!("{next:05}"), &next)?;
                    Ok(next)
                })
                .await
                .unwrap()
            }));
        }
        let mut got: Vec<u64> = Vec::new();
        for j in jobs {
            got.push(j.await.unwrap());
        }
        got.sort_unstable();
        assert_eq!(
            got,
            (1..=n).collect::<Vec<u64>>(),
            "every value once, no gap"
        );
    });
    for store in [&a, &b] {
        wait_until("both copies have every revision", || {
            read::<_, StoreError>(&**store, |t| t.count("counter", "0")).unwrap() == n
        });
    }
    // A reset on one replica empties the other's copy too.
    rt.block_on(async { a.reset().await.unwrap() });
    assert!(keys(&*a, "svc", "").is_empty());
    wait_until("b sees the reset", || keys(&*b, "counter", "").is_empty());
    rt.block_on(async {
        write::<_, E>(&*b, |t| Ok(t.put_json("svc", "after", &2)?))
            .await
            .unwrap();
    });
    wait_until("a sees b's write after the reset", || {
        keys(&*a, "svc", "") == ["after"]
    });
}

#[test]
fn a_replica_that_starts_later_loads_everything_and_follows_on() {
    let Some(url) = database() else { return };
    let rt = runtime();
    let a = PgStore::open(&url).unwrap();
    rt.block_on(async {
        for i in 0..50 {
            write::<_, E>(&a, move |t| {
                Ok(t.put_json("task", &format!("{i:03}"), &i)?)
            })
            .await
            .unwrap();
        }
    });
    let late = PgStore::open(&url).unwrap();
    assert_eq!(keys(&late, "task", "").len(), 50);
    assert_eq!(late.revision(), a.revision());
    rt.block_on(async {
        write::<_, E>(&a, |t| Ok(t.delete("task", "000")?))
            .await
            .unwrap();
    });
    wait_until("the late replica follows a delete", || {
        keys(&late, "task", "").len() == 49
    });
}

#[test]
fn a_deposed_leaders_fenced_writes_are_refused_and_its_successors_commit() {
    let Some(url) = database() else { return };
    let rt = runtime();
    let store = PgStore::open(&url).unwrap();
    let a = Leadership::join(&url, "a").unwrap();
    let mut leading = a.watch();
    wait_until("a leads", || leading.borrow_and_update().is_some());
    let epoch = leading.borrow().unwrap();
    let put = |epoch: Option<i64>, key: &'static str| {
        let job = write::<_, E>(&store, move |t| Ok(t.put_json("svc", key, &1)?));
        rt.block_on(async {
            match epoch {
                Some(e) => fenced(e, job).await,
                None => job.await,
            }
        })
    };
    assert_eq!(put(Some(epoch), "by-leader"), Ok(()));
    // Another replica takes the lease while `a` has not noticed yet (paused, or cut off).
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .execute(
            "UPDATE fleetport_lease SET holder = 'b', epoch = epoch + 1, \
             expires_at = now() + interval '30 seconds' WHERE name = 'leader'",
            &[],
        )
        .unwrap();
    assert_eq!(put(Some(epoch), "by-old-leader"), Err(E::Store));
    assert_eq!(put(Some(epoch + 1), "by-new-leader"), Ok(()));
    assert_eq!(
        put(None, "by-api"),
        Ok(()),
        "unfenced writes are not affected"
    );
    assert_eq!(
        keys(&store, "svc", ""),
        ["by-api", "by-leader", "by-new-leader"]
    );
    wait_until("a notices it lost the lease", || {
        leading.borrow_and_update().is_none()
    });
    let seen = a.epochs();
    wait_until("a has seen the new epoch", || *seen.borrow() == epoch + 1);
}

#[test]
fn a_replica_learns_which_collections_the_others_changed() {
    let Some(url) = database() else { return };
    let rt = runtime();
    let a = PgStore::open(&url).unwrap();
    let b = PgStore::open(&url).unwrap();
    rt.block_on(async {
        write::<_, E>(&a, |t| {
            t.put_json("@1/r/ecs.service", "x", &1)?;
            Ok(t.put_json("iam.user", "u", &1)?)
        })
        .await
        .unwrap();
    });
    let mut seen = std::collections::BTreeSet::new();
    wait_until("b hears of both collections", || {
        seen.extend(b.take_remote_collections());
        seen.len() == 2
    });
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["@1/r/ecs.service", "iam.user"]
    );
    assert!(b.take_remote_collections().is_empty(), "taken once");
    assert!(
        a.take_remote_collections().is_empty(),
        "a replica's own writes are not remote"
    );
    rt.block_on(b.reset()).unwrap();
    wait_until("a reset means everything", || {
        a.take_remote_collections().contains(&String::new())
    });
}
