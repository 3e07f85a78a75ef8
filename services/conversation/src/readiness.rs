//! Whether this instance can serve: its database answers. Every call needs PostgreSQL
//! (NATS may be down: the outbox waits), so while a ping fails the instance reports
//! NOT_SERVING on grpc.health.v1 and the callers' balancers send their calls to another
//! instance; it reports SERVING again at the first ping that succeeds.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

/// How often the database is pinged.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// A ping slower than this counts as a failure: a database that slow serves no call.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Pings the database every `interval` until `stop` resolves; the receiver holds whether
/// the last ping succeeded (true at first: the pool has just connected).
pub fn watch_database(
    pool: PgPool,
    interval: Duration,
    stop: impl Future<Output = ()> + Send + 'static,
) -> watch::Receiver<bool> {
    let (ready, receiver) = watch::channel(true);
    tokio::spawn(async move {
        let mut stop = std::pin::pin!(stop);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = ticks.tick() => {}
            }
            let answered = matches!(
                tokio::time::timeout(PING_TIMEOUT, sqlx::query("SELECT 1").execute(&pool)).await,
                Ok(Ok(_))
            );
            ready.send_if_modified(|ready| {
                if *ready == answered {
                    return false;
                }
                if answered {
                    tracing::info!("the database answers again: SERVING");
                } else {
                    tracing::warn!("the database does not answer: NOT_SERVING until it does");
                }
                *ready = answered;
                true
            });
        }
    });
    receiver
}
