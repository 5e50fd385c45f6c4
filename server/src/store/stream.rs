//! Large values read out row by row: a task holds one connection in a
//! read-only REPEATABLE READ transaction (one consistent view however long
//! the reading takes) and fetches one row a round trip through a portal,
//! only as fast as the receiver takes them, so memory holds a row or two
//! whatever the total. The task stops when the receiver goes away.

use actix_web::web::Bytes;
use deadpool_postgres::Pool;
use futures_util::Stream;
use tracing::Instrument;

use super::Query;
use crate::error::{Error, Result};

/// Rows in flight between the reading task and the receiver.
const ROWS_AHEAD: usize = 2;

/// The first column (`bytea`) of each row `query` selects, in its order.
pub(super) fn first_column(
    pool: Pool,
    query: Query,
) -> impl Stream<Item = Result<Bytes>> + 'static {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes>>(ROWS_AHEAD);
    tokio::spawn(
        async move {
            let read = async {
                let mut client = pool.get().await?;
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                super::trace_statement(&query.sql);
                let statement = tx.prepare_cached(&query.sql).await?;
                let portal = tx.bind(&statement, &query.values()).await?;
                loop {
                    let rows = tx.query_portal(&portal, 1).await?;
                    let Some(row) = rows.first() else { break };
                    let bytes: Vec<u8> = row.get(0);
                    if sender.send(Ok(Bytes::from(bytes))).await.is_err() {
                        break;
                    }
                }
                tx.commit().await?;
                Ok::<(), Error>(())
            };
            if let Err(e) = read.await {
                tracing::error!(error = %e, "streaming stored bytes");
                let _ = sender.send(Err(e)).await;
            }
        }
        // The request's work, logged in its span.
        .in_current_span(),
    );
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}
